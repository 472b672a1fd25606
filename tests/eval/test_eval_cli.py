"""``spherear eval-fid`` as a user runs it: defaults, an ADM reference batch, one-line errors."""

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from spherear.cli import app
from spherear.eval.features import random_inception_weights
from spherear.eval.metrics import feature_statistics
from spherear.eval.npz import file_sha256

from ..conftest import one_line_error

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def _images(n: int, size: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return random_inception_weights(tmp_path_factory.mktemp("w") / "inception.pth", seed=1)


def eval_fid(*args: str):
    return runner.invoke(app, ["eval-fid", *args])


def test_against_an_adm_reference_batch(weights, tmp_path, monkeypatch):
    import timm
    from safetensors.torch import save_file

    monkeypatch.setenv("SPHEREAR_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    samples = tmp_path / "samples" / "samples.npz"
    samples.parent.mkdir()
    np.savez(samples, _images(4, 32, 0))
    # stored statistics with zero covariances: FID must then be |dmu|^2 + tr(S_samples)
    rng = np.random.default_rng(0)
    stored = {"mu": rng.random(2048), "sigma": np.zeros((2048, 2048))}
    stored |= {"mu_s": rng.random(2023), "sigma_s": np.zeros((2023, 2023))}
    ref = tmp_path / "VIRTUAL_fake32_labeled.npz"
    np.savez(ref, arr_0=_images(5, 32, 1), **stored)
    vit = tmp_path / "vit.safetensors"
    save_file(timm.create_model("vit_tiny_patch16_224").state_dict(), vit)

    extra = f"timm:vit_tiny_patch16_224={vit}"
    result = eval_fid(str(samples), "--ref", str(ref), "--inception-weights", str(weights),
                      "--batch-size", "3", "--features", extra)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "warning: only 4 samples (< 2048): FID is biased" in result.stderr
    report = json.loads((samples.parent / "eval-fid.json").read_text())
    metrics = report["metrics"]
    assert set(metrics) == {"FID", "sFID", "IS", "precision", "recall", "FD_vit_tiny_patch16_224"}
    assert report["num_samples"] == 4 and report["num_reference_images"] == 5
    assert report["inception_weights_sha256"] == file_sha256(weights)
    assert report["protocol"] and report["warnings"]
    assert "FD_vit_tiny_patch16_224" in result.stdout and str(ref) in report["reference"]

    cached = next((tmp_path / "cache" / "features").glob(f"inception*{file_sha256(samples)[:32]}*"))
    with np.load(cached) as f:
        pool, spatial = f["pool"], f["spatial"]
    for value, feats, mu in ((metrics["FID"], pool, "mu"), (metrics["sFID"], spatial, "mu_s")):
        mean, sigma = feature_statistics(feats)
        expected = np.sum((mean - stored[mu]) ** 2) + np.trace(sigma)
        assert value == pytest.approx(expected, rel=1e-9)
    assert 1.0 <= metrics["IS"] <= 4 and 0 <= metrics["precision"] <= 1


def _write(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(
    ("arrays", "words"),
    [
        ({"images": _images(3, 32, 0)}, ["no arr_0", "images"]),
        ({"arr_0": _images(3, 32, 0).astype(np.float32)}, ["float32", "uint8"]),
        ({"arr_0": _images(3, 32, 0)[..., 0]}, ["shape (3, 32, 32)", "N x H x W x 3"]),
    ],
)
def test_bad_samples_are_one_line_errors(weights, tmp_path, arrays, words):
    samples = _write(tmp_path / "samples.npz", **arrays)
    result = eval_fid(str(samples), "--ref", str(samples), "--inception-weights", str(weights))
    one_line_error(result, str(samples), *words)


def test_bad_references_are_one_line_errors(weights, tmp_path):
    text = tmp_path / "notes.npz"
    text.write_text("not a zip")
    one_line_error(eval_fid(str(text), "--inception-weights", str(weights)), "not an .npz")
    samples = _write(tmp_path / "samples.npz", arr_0=_images(3, 32, 0))
    ref = _write(tmp_path / "ref.npz", arr_0=_images(3, 64, 0))
    result = eval_fid(str(samples), "--ref", str(ref), "--inception-weights", str(weights))
    one_line_error(result, "64x64", "32x32")
    stats = _write(tmp_path / "stats.npz", mu=np.zeros(10), sigma=np.eye(10))
    result = eval_fid(str(samples), "--ref", str(stats), "--inception-weights", str(weights))
    one_line_error(result, "wrong shape", "mu (10,)")


def test_bare_command_finds_the_latest_samples_and_the_run_reference(
    weights, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    one_line_error(eval_fid(), "no samples.npz under runs/")

    run = Path("runs/tiny")
    (run / "samples/n3-seed0").mkdir(parents=True)
    samples = _write(run / "samples/n3-seed0/samples.npz", arr_0=_images(3, 32, 0))
    recipe = (ROOT / "recipes" / "tiny.toml").read_text().split("[eval]")[0]
    (run / "recipe.toml").write_text(recipe)
    one_line_error(eval_fid("--inception-weights", str(weights)), "--ref", "eval.reference")

    # the recipe's reference is used: its (wrong) resolution is what stops the run
    _write(Path("ref64.npz"), arr_0=_images(3, 64, 0))
    (run / "recipe.toml").write_text(recipe + '[eval]\nreference = "ref64.npz"\n')
    result = eval_fid("--inception-weights", str(weights))
    assert f"samples: {samples}" in result.stdout
    assert "reference: ref64.npz (eval.reference in runs/tiny/recipe.toml)" in result.stdout
    one_line_error(result, "ref64.npz", "64x64")
    missing = tmp_path / "data" / "not-prepared-yet"
    result = eval_fid(str(samples), "--ref", str(missing), "--inception-weights", str(weights))
    one_line_error(result, "does not exist", "--ref", "prepare-data")


@pytest.mark.slow
def test_results_are_printed_before_they_are_written(pipeline, cli):
    """A disk that is full when the results are written (there is room for no file at all)
    loses nothing: the table is already on the screen."""
    from ..forkserver import NO_NAMESPACE

    run = pipeline.restore("eval-fid")
    (run / "full").mkdir()
    argv = [*pipeline.command("eval-fid"), "--json", "full/eval-fid.json"]
    done = cli.run(argv, run, env=pipeline.env(),
                   mounts=[["full", run / "full", "size=64k,nr_inodes=1"]])  # fmt: skip
    if done.code == NO_NAMESPACE:
        pytest.skip("this system allows no private mount namespace")
    assert done.code == 2 and "FID" in done.stdout and "IS" in done.stdout, done.stderr
    assert done.lines[-1] == (
        "error: full/eval-fid.json: no space left on the device; free some space or write "
        "elsewhere, then rerun the same command (finished parts are kept)"
    )
