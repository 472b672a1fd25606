"""push-to-hub, from_pretrained and hf:// addresses, without a network.

A "run" here is what train-ar leaves behind (export/, recipe.toml, checkpoints/, samples/),
written with random tiny weights: publishing does not care how well a model was trained.
The only thing replaced is huggingface_hub's HfApi network methods; the HF cache is a
temporary folder laid out as huggingface_hub lays it out.
"""

import copy
import hashlib
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import HfApi, ModelCard, ModelCardData
from typer.testing import CliRunner

import spherear
from spherear.checkpoints import load_checkpoint, save_pretrained
from spherear.cli import app
from spherear.config import SampleConfig, save_recipe
from spherear.grids import save_grid
from spherear.hub.card import check_card
from spherear.hub_files import HubAddress, parse_address
from spherear.models import build_ar, build_vae

from .test_checkpoints import _save as save_authors_file

TAG = "n8-cfg2.0-linear-steps4-sde-seed0"
FID = {"FID": 123.4, "sFID": 50.1, "IS": 3.2, "precision": 0.1, "recall": 0.05}
MODEL_INDEX = {"fid": 123.4, "sfid": 50.1, "inception_score": 3.2, "precision": 0.1, "recall": 0.05}
A_TOKEN = "hf_" + "aB3" * 12  # the shape of a real access token
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def make_run(root: Path, recipe, repo_id: str = "me/tiny-sphere", kind: str = "ar") -> Path:
    run = root / "runs" / f"tiny-{kind}"
    recipe = copy.deepcopy(recipe)
    recipe.run.output_dir = str(run)
    recipe.hub.repo_id = repo_id
    recipe.sample.steps = 4  # what the card's usage example runs with
    if kind == "vae":
        recipe.ar = None
        save_pretrained(run / "export", recipe, build_vae(recipe))
    else:
        ar = build_ar(recipe)
        ema = {k: v + 0.05 * torch.randn_like(v) for k, v in ar.state_dict().items()}
        save_pretrained(run / "export", recipe, build_vae(recipe), ema, ar.state_dict())
    save_recipe(recipe, run)
    (run / "checkpoints" / "step-00000010").mkdir(parents=True)
    (run / "checkpoints" / "step-00000010" / "optimizer.bin").write_bytes(b"\0" * 64)
    (run / "metrics.jsonl").write_text('{"step": 10, "loss": 1.0}\n')
    if kind == "vae":
        save_grid(torch.rand(8, 3, 32, 32) * 2 - 1, run / "reconstructions" / "step-1.png", 4)
        return run
    samples = run / "samples" / TAG
    samples.mkdir(parents=True)
    save_grid(torch.rand(8, 3, 32, 32) * 2 - 1, samples / "grid.png", nrow=4)
    save_grid(torch.rand(4, 3, 32, 32) * 2 - 1, run / "samples" / "step-00000010.png", nrow=4)
    np.savez(samples / "samples.npz", np.zeros((8, 32, 32, 3), np.uint8))
    np.save(samples / "labels.npy", np.arange(8))
    settings = {
        "n": 8,
        "cfg": 2.0,
        "cfg_schedule": "linear",
        "steps": 4,
        "sampler": "sde",
        "labels": "balanced",
        "seed": 0,
        "batch_size": 100,
        "weights": "ema",
        "checkpoint": f"{run / 'export'} (spherear export, ema weights)",
    }
    (samples / "settings.json").write_text(json.dumps(settings))
    fid = {
        "protocol": "adm-evaluator/1",
        "metrics": FID | {"FD_dinov2": 77.0},
        "num_samples": 8,
        "reference": f"{root}/ref/reference.npz (8 images)",
        "warnings": ["only 8 samples (< 10000): FID is biased upwards"],
    }
    (samples / "eval-fid.json").write_text(json.dumps(fid))
    (samples / "eval-probe.json").write_text(json.dumps({"class_consistency": 0.875}))
    return run


def push(*args: str):
    return CliRunner().invoke(app, ["push-to-hub", *args])


def files_in(folder: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``folder``."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def one_thread():
    """Sampling is thousands of tiny matmuls: on a shared CPU, threads only contend."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def sample_images(loaded) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    settings = SampleConfig(cfg=2.0, cfg_schedule="linear", steps=4, sampler="sde")
    tokens = loaded.ar.sample(torch.tensor([1, 2]), settings, generator)
    return loaded.vae.decode(tokens)


def test_dry_run_folder_loads_back_into_the_same_sampler_and_its_card_validates(
    tmp_path, tiny_recipe, one_thread
):
    run = make_run(tmp_path, tiny_recipe)
    out = push("--run", str(run), "--dry-run", str(tmp_path / "staged"))
    assert out.exit_code == 0, out.output
    assert f"run: {run}" in out.output and "nothing was uploaded" in out.output
    staged = tmp_path / "staged"
    names = {
        "README.md",
        "ar.safetensors",
        "config.json",
        "grid.png",
        "recipe.toml",
        "vae.safetensors",
    }
    assert set(files_in(staged)) == names  # EMA only; no checkpoints/, no samples/ by default
    assert files_in(staged)["grid.png"] == files_in(run / "samples" / TAG)["grid.png"]

    published = sample_images(spherear.from_pretrained(staged))
    assert torch.equal(published, sample_images(load_checkpoint(run / "export")))
    raw = sample_images(load_checkpoint(run / "export", weights="raw"))
    assert not torch.equal(published, raw)  # the EMA weights were published, not the raw ones

    card = ModelCard.load(staged / "README.md")  # the offline part of what the hub validates
    assert ModelCardData(**card.data.to_dict()).to_dict() == card.data.to_dict()
    assert check_card(staged / "README.md").data.library_name == "spherear"
    assert card.data.license == "mit" and "spherear" in card.data.tags
    assert card.data.model_name == "tiny-sphere"
    assert {r.metric_type: r.metric_value for r in card.data.eval_results} == MODEL_INDEX
    assert all(TAG in r.metric_name for r in card.data.eval_results)
    text = card.text
    assert "![samples](grid.png)" in text and "| FID | 123.4 |" in text
    assert "| FD_dinov2 | 77 |" in text and "(8 images); sampling settings: n=8, cfg=2.0" in text
    assert "reference `reference.npz (8 images)`" in text and "> Warning: only 8 samples" in text
    assert "spherear sample --checkpoint hf://me/tiny-sphere" in text
    assert 'spherear.from_pretrained("me/tiny-sphere")' in text
    assert "| class_consistency | 0.875 |" in text and "not a standard benchmark" in text
    assert str(tmp_path) not in text  # local paths from settings.json stay local

    usage = text.split("```python\n")[1].split("```")[0]
    exec(usage.replace('"me/tiny-sphere"', repr(str(staged))), scope := {})
    assert scope["images"].shape == (4, 3, 32, 32)


@pytest.mark.parametrize("create_pr", [False, True])
def test_push_hands_exactly_the_staged_folder_to_one_upload(
    tmp_path, tiny_recipe, monkeypatch, create_pr
):
    run = make_run(tmp_path, tiny_recipe)
    calls = []

    def create_repo(self, repo_id, **kwargs):
        calls.append(("create_repo", repo_id, kwargs))

    def create_branch(self, repo_id, **kwargs):
        calls.append(("create_branch", repo_id, kwargs))

    def upload_folder(self, **kwargs):
        calls.append(("upload_folder", files_in(Path(kwargs.pop("folder_path"))), kwargs))
        url = "https://huggingface.co/other/name"
        return types.SimpleNamespace(
            commit_url=f"{url}/commit/1", pr_url=f"{url}/discussions/1" if create_pr else None
        )

    for name, method in [
        ("create_repo", create_repo),
        ("create_branch", create_branch),
        ("upload_folder", upload_folder),
    ]:
        monkeypatch.setattr(HfApi, name, method)
    args = [
        "--run",
        str(run),
        "--repo-id",
        "other/name",
        "--private",
        "--revision",
        "dev",
        "--include-samples",
        "--weights",
        "both",
    ] + (["--create-pr"] if create_pr else [])
    out = push(*args)
    assert out.exit_code == 0, out.output

    assert calls[0] == ("create_repo", "other/name", {"private": True, "exist_ok": True})
    if not create_pr:  # a commit to a branch that may not exist yet
        assert calls[1] == ("create_branch", "other/name", {"branch": "dev", "exist_ok": True})
    assert [c[0] for c in calls].count("upload_folder") == 1 and calls[-1][0] == "upload_folder"
    _, uploaded, kwargs = calls[-1]
    assert kwargs == {
        "repo_id": "other/name",
        "revision": "dev",
        "create_pr": create_pr,
        "commit_message": f"Upload {run.name} with spherear {spherear.__version__}",
    }
    export, samples = files_in(run / "export"), files_in(run / "samples" / TAG)
    expected = {name: export[name] for name in export}  # vae, ar (EMA), ar_raw, config, recipe
    expected |= {f"samples/{TAG}/{name}": h for name, h in samples.items()}
    expected["grid.png"] = samples["grid.png"]
    assert {k: v for k, v in uploaded.items() if k != "README.md"} == expected
    assert "README.md" in uploaded
    assert ("discussions/1" if create_pr else "commit/1") in out.output
    assert not list(run.glob(".push-to-hub-*"))  # the staging folder is gone


def test_bare_command_takes_the_newest_run_and_the_recipes_repo_id(
    tmp_path, tiny_recipe, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    make_run(tmp_path, tiny_recipe, repo_id="me/tokenizer", kind="vae")
    out = push("--dry-run", "vae-only")
    assert out.exit_code == 0, out.output
    assert "runs/tiny-vae (no train-ar run, so the newest train-vae run under runs/)" in out.output
    published = {"README.md", "config.json", "recipe.toml", "vae.safetensors", "grid.png"}
    assert set(files_in(tmp_path / "vae-only")) == published
    card = check_card(tmp_path / "vae-only" / "README.md")
    assert card.data.eval_results is None and "image-tokenizer" in card.data.tags
    assert "![reconstructions](grid.png)" in card.text and "vae.encode(images)" in card.text

    make_run(tmp_path, tiny_recipe, repo_id="")
    out = push("--dry-run", "ar")
    assert out.exit_code == 2 and not (tmp_path / "ar").exists()
    assert "run: runs/tiny-ar (the newest train-ar run under runs/)" in out.output
    assert out.output.count("error:") == 1 and "pass --repo-id USER/NAME" in out.output


def test_a_token_in_a_run_file_is_refused_and_nothing_is_written(
    tmp_path, tiny_recipe, monkeypatch
):
    run = make_run(tmp_path, tiny_recipe)
    recipe_toml = run / "export" / "recipe.toml"
    recipe_toml.write_text(recipe_toml.read_text() + f"# pushed with {A_TOKEN}\n")
    out = push("--run", str(run), "--dry-run", str(tmp_path / "staged"))
    assert out.exit_code == 2
    error = [line for line in out.output.splitlines() if line.startswith("error:")]
    assert error == [
        f"error: {recipe_toml}: holds a Hugging Face access token; refusing to publish it "
        "(remove the token from that file, and revoke it if it was ever shared)"
    ]
    assert A_TOKEN not in out.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]  # no DIR, no staging left

    # the current token, whatever it looks like, found in a file that only feeds the card
    recipe_toml.write_text(recipe_toml.read_text().replace(A_TOKEN, ""))
    secret = "s3cret-value-of-hf-token"
    monkeypatch.setenv("HF_TOKEN", secret)
    eval_fid = run / "samples" / TAG / "eval-fid.json"
    eval_fid.write_text(json.dumps({"metrics": FID, "reference": f"/data/{secret}.npz"}))
    out = push("--run", str(run), "--dry-run", str(tmp_path / "staged"))
    assert out.exit_code == 2 and f"error: {eval_fid}: holds a Hugging Face" in out.output
    assert secret not in out.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("hf://guolinke/SphereAR/vae.pt", HubAddress("guolinke/SphereAR", None, "vae.pt")),
        (Path("hf://me/model@v1.0"), HubAddress("me/model", "v1.0")),  # Path eats a slash
        (
            "hf://me/m@refs/pr/3/export/config.json",
            HubAddress("me/m", "refs/pr/3", "export/config.json"),
        ),
        ("runs/tiny/export", None),
    ],
)
def test_hub_addresses_parse(text, address):
    assert parse_address(text) == address
    if address is not None:
        assert parse_address(str(address)) == address


def spherear_process(*args: str, env: dict) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")} | env
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env)


def test_authors_files_by_hub_address_offline_fail_fast_then_load_from_the_cache(tmp_path):
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    address = "hf://guolinke/SphereAR/SphereAR_B.pt"
    out = spherear_process("-m", "spherear", "sample", "--checkpoint", address, "--n", "1", env=env)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr == (
        f"error: {address}: not in the Hugging Face cache and HF_HUB_OFFLINE=1 is set; fetch "
        "it with `hf download guolinke/SphereAR SphereAR_B.pt` while online\n"
    )

    repo = tmp_path / "hf" / "hub" / "models--guolinke--SphereAR"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    save_authors_file(snapshot / "SphereAR_B.pt", "SphereAR-B")
    save_authors_file(snapshot / "vae.pt", "vae_only")
    check = f"""
import torch
from spherear.checkpoints import load_authors_checkpoint, load_checkpoint
from spherear.cli import app
app(["info", "--checkpoint", "{address}"], standalone_mode=False)
loaded = load_checkpoint("hf://guolinke/SphereAR/vae.pt")
direct = load_authors_checkpoint({str(snapshot / "vae.pt")!r})
same = all(torch.equal(v, direct.vae.state_dict()[k]) for k, v in loaded.vae.state_dict().items())
print(same, loaded.ar is None, loaded.description)
"""
    out = spherear_process("-c", check, env=env)  # one process: importing torch is slow
    assert out.returncode == 0, out.stderr
    info, vae = out.stdout.splitlines()
    assert info.startswith(f"hf://guolinke/SphereAR@{COMMIT}/SphereAR_B.pt: authors'")
    assert "full SphereAR-B (VAE + AR), EMA weights present" in info
    assert vae.startswith(f"True True hf://guolinke/SphereAR@{COMMIT}/vae.pt, cached as ")
