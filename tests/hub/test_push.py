"""push-to-hub: exactly the staged folder goes to one upload; a bare command finds the
newest run and the recipe's repo id."""

import types
from pathlib import Path

import pytest
from huggingface_hub import HfApi

import spherear
from spherear.hub.card import check_card

from .conftest import TAG, files_in, make_run, push


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

    model = {"repo_type": "model"}
    assert calls[0] == ("create_repo", "other/name", {"private": True, "exist_ok": True} | model)
    if not create_pr:  # a commit to a branch that may not exist yet
        branch = {"branch": "dev", "exist_ok": True} | model
        assert calls[1] == ("create_branch", "other/name", branch)
    assert [c[0] for c in calls].count("upload_folder") == 1 and calls[-1][0] == "upload_folder"
    _, uploaded, kwargs = calls[-1]
    assert kwargs == {
        "repo_id": "other/name",
        "repo_type": "model",
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


def test_space_goes_to_a_gradio_space_of_its_own_after_the_model(
    tmp_path, tiny_recipe, monkeypatch
):
    pytest.importorskip("gradio", reason="--space pins the installed gradio: the demo extra")
    run = make_run(tmp_path, tiny_recipe)
    calls = []

    def create_repo(self, repo_id, **kwargs):
        calls.append(("create_repo", repo_id, kwargs))

    def upload_folder(self, **kwargs):
        folder = Path(kwargs.pop("folder_path"))
        app = folder / "app.py"
        app = app.read_text() if app.is_file() else ""
        calls.append(
            ("upload_folder", kwargs["repo_id"], kwargs["repo_type"], files_in(folder), app)
        )
        return types.SimpleNamespace(commit_url=f"https://hub/{kwargs['repo_id']}/c", pr_url=None)

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "create_branch", lambda self, repo_id, **kwargs: None)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    out = push("--run", str(run), "--repo-id", "other/name", "--revision", "v2", "--space")
    assert out.exit_code == 0, out.output
    assert [c[:2] for c in calls if c[0] == "upload_folder"] == [
        ("upload_folder", "other/name"), ("upload_folder", "other/name-demo")]  # fmt: skip
    assert calls[2] == ("create_repo", "other/name-demo",
                        {"private": False, "exist_ok": True, "repo_type": "space",
                         "space_sdk": "gradio"})  # fmt: skip
    _, _, kind, files, app = calls[-1]
    assert kind == "space" and sorted(files) == ["README.md", "app.py", "requirements.txt"]
    assert '"hf://other/name@v2"' in app  # the revision just pushed
    assert "pushed the Space other/name-demo: https://hub/other/name-demo/c" in out.output


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
