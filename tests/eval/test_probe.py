"""The offline probe: it learns the synthetic set, scores real images as real and wrong
labels as chance, caches itself honestly, and ``spherear eval-probe`` works bare after
``spherear sample``."""

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from spherear.cli import app
from spherear.config import load_recipe, save_recipe
from spherear.data.prepare import prepare_dataset
from spherear.data.synthetic import render
from spherear.eval.probe import ProbeSettings, evaluate, load_or_train, probe_warnings, score

from ..conftest import file_stamps, one_line_error

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()
# a small set (1,600 training and 400 held-out images) and about half the default training
SETTINGS = ProbeSettings(steps=400, held_out=400)


def _prepare(out: Path, num_images: int, seed: int = 0) -> Path:
    prepare_dataset("synthetic", out, 32, num_images=num_images, seed=seed, progress=False)
    return out


def _write_samples(folder: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "samples.npz", images)
    np.save(folder / "labels.npy", labels.astype(np.int64))
    return folder / "samples.npz"


def _real(n: int, stream: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic images from a stream the probe never saw (the validation split's)."""
    pairs = [render(stream, i, 32) for i in range(n)]
    return np.stack([p[0] for p in pairs]), np.array([p[1] for p in pairs])


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    folder = _prepare(tmp_path_factory.mktemp("probe") / "synthetic32", 2000)
    load_or_train(folder, 32, SETTINGS, progress=False)
    return folder


def test_probe_learns_the_synthetic_set(data):
    probe = load_or_train(data, 32, SETTINGS, progress=False)
    assert probe.reused
    assert probe.meta["num_train"] == 1600 and probe.meta["num_held_out"] == 400
    assert probe.meta["held_out_accuracy"] >= 0.95


def test_real_images_score_high_and_wrong_labels_score_chance(data):
    probe = load_or_train(data, 32, progress=False)  # the cached one, whatever its settings
    assert probe.reused
    images, labels = _real(400)
    real = score(probe, images, labels)
    assert real["metrics"]["probe_class_consistency"] >= 0.9
    assert set(real["per_class"]) == set(probe.class_names)
    assert all(c["samples"] == 40 for c in real["per_class"].values())
    # the held-out images: a fifth of each class of the 2,000 (400 / 10 classes)
    assert all(c["held_out_images"] == 40 for c in real["per_class"].values())

    shuffled = score(probe, images, np.random.default_rng(0).permutation(labels))
    assert shuffled["metrics"]["probe_class_consistency"] < 0.25  # chance is 0.1
    # FD_probe looks at the images only; a generator stuck on two classes is far away
    assert shuffled["metrics"]["FD_probe"] == pytest.approx(real["metrics"]["FD_probe"])
    two = labels < 2
    collapsed = score(probe, np.concatenate([images[two]] * 5), np.tile(labels[two], 5))
    assert real["metrics"]["FD_probe"] < collapsed["metrics"]["FD_probe"] / 5


def test_cache_is_reused_until_data_or_settings_change(tmp_path, monkeypatch):
    quick = ProbeSettings(steps=3)
    data = _prepare(tmp_path / "a", 100)
    untouched = file_stamps(data)
    first = load_or_train(data, 32, quick, progress=False)
    assert file_stamps(data) == untouched  # the data folder is an input: nothing is written there
    meta = first.folder / "probe.json"
    stamp = meta.stat().st_mtime_ns
    again = load_or_train(data, 32, quick, progress=False)
    assert again.reused and not first.reused and meta.stat().st_mtime_ns == stamp
    assert again.meta["weights_sha256"] == first.meta["weights_sha256"]
    assert load_or_train(data, 32, progress=False).reused  # no settings asked: any will do

    # deterministic: the same data and seed elsewhere, with an empty cache, give the same
    # weights
    copy = tmp_path / "copy"
    shutil.copytree(data, copy)
    with monkeypatch.context() as m:
        m.setenv("SPHEREAR_CACHE", str(tmp_path / "other_cache"))
        elsewhere = load_or_train(copy, 32, quick, progress=False)
    assert not elsewhere.reused
    assert elsewhere.meta["weights_sha256"] == first.meta["weights_sha256"]

    other = load_or_train(data, 32, dataclasses.replace(quick, seed=1), progress=False)
    assert not other.reused

    # the data re-prepared in place (another seed): the probe is retrained
    _prepare(tmp_path / "b", 100, seed=1)
    shutil.rmtree(data / "data")
    shutil.copytree(tmp_path / "b" / "data", data / "data")
    shutil.copy(tmp_path / "b" / "info.json", data / "info.json")
    retrained = load_or_train(data, 32, dataclasses.replace(quick, seed=1), progress=False)
    assert not retrained.reused
    assert retrained.meta["data_fingerprint"] != other.meta["data_fingerprint"]

    # a weights file that does not match probe.json is never used
    (retrained.folder / "probe.safetensors").write_bytes(b"not weights")
    assert not load_or_train(data, 32, quick, progress=False).reused


def test_warnings_name_a_weak_probe_and_missing_classes():
    held = {"a": {"images": 5, "accuracy": 1.0}, "b": {"images": 5, "accuracy": 0.2},
            "c": {"images": 0, "accuracy": None}}  # fmt: skip
    meta = {"held_out_accuracy": 0.6, "train_per_class": {"a": 20, "b": 0, "c": 3},
            "held_out_per_class": held}  # fmt: skip
    weak, untrained, unheld = probe_warnings(meta)
    assert "60.0%" in weak and "under 90%" in weak and "b 20%" in weak
    assert "no image of b in the probe's training split" in untrained
    assert "no held-out image of c" in unheld
    assert all("\n" not in w for w in (weak, untrained, unheld))
    meta = {"held_out_accuracy": 0.95, "train_per_class": {"a": 20, "b": 20},
            "held_out_per_class": {k: {"images": 5, "accuracy": 0.95} for k in "ab"}}  # fmt: skip
    assert probe_warnings(meta) == []


def test_mirror_images_only_when_the_recipe_says_the_classes_are_flip_invariant(data, tmp_path):
    assert not ProbeSettings().hflip
    run = tmp_path / "runs" / "flip"
    recipe = load_recipe(ROOT / "recipes" / "tiny.toml",
                         [f"data.prepared={data}", "augment.hflip=true"])  # fmt: skip
    save_recipe(recipe, run)
    images, labels = _real(150)
    samples = _write_samples(run / "samples" / "n150", images, labels)
    flipped = load_or_train(data, 32, ProbeSettings(steps=3, hflip=True), progress=False)
    result = runner.invoke(app, ["eval-probe", str(samples)])
    assert result.exit_code == 0, result.output
    report = json.loads((samples.parent / "eval-probe.json").read_text())
    assert report["probe"]["settings"]["hflip"] and report["probe"]["reused"]
    assert report["probe"]["fingerprint"] == flipped.meta["weights_sha256"]
    assert "warning: the probe recognises only" in result.stderr  # 3 steps learn nothing


def test_bare_eval_probe_after_sample(data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "runs" / "tiny"
    recipe = load_recipe(ROOT / "recipes" / "tiny.toml", [f"data.prepared={data}"])
    save_recipe(recipe, run)
    images, labels = _real(300)
    samples = _write_samples(run / "samples" / "n300-test", images, labels)

    result = runner.invoke(app, ["eval-probe"])
    assert result.exit_code == 0, result.output
    assert f"samples: {Path('runs/tiny/samples/n300-test/samples.npz')}" in result.output
    assert f"data: {data}" in result.output
    assert "probe class-consistency" in result.output and "FD_probe" in result.output
    report = json.loads((samples.parent / "eval-probe.json").read_text())
    assert report["num_samples"] == 300 and report["probe"]["reused"]
    assert report["metrics"]["probe_class_consistency"] >= 0.9
    assert report["probe"]["fingerprint"] == load_or_train(data, 32).meta["weights_sha256"]
    assert "FID" not in report["metrics"]

    out = tmp_path / "elsewhere.json"
    assert runner.invoke(app, ["eval-probe", str(samples), "--json", str(out)]).exit_code == 0
    assert json.loads(out.read_text())["metrics"] == report["metrics"]


def test_bad_inputs_are_one_line_errors(data, tmp_path):
    images, labels = _real(20)
    no_labels = tmp_path / "no_labels" / "samples.npz"
    no_labels.parent.mkdir()
    np.savez(no_labels, images)
    one_line_error(runner.invoke(app, ["eval-probe", str(no_labels), "--data", str(data)]),
                    "labels.npy")  # fmt: skip

    floats = _write_samples(tmp_path / "floats", images.astype(np.float32), labels)
    one_line_error(runner.invoke(app, ["eval-probe", str(floats), "--data", str(data)]),
                    "uint8")  # fmt: skip

    short = _write_samples(tmp_path / "short", images, labels[:5])
    one_line_error(runner.invoke(app, ["eval-probe", str(short), "--data", str(data)]),
                    "labels.npy", "20")  # fmt: skip

    small = _write_samples(tmp_path / "small", images[:, ::2, ::2], labels)
    one_line_error(runner.invoke(app, ["eval-probe", str(small), "--data", str(data)]),
                    "16px", "--data")  # fmt: skip

    wrong = _write_samples(tmp_path / "wrong", images, labels + 10)
    one_line_error(runner.invoke(app, ["eval-probe", str(wrong), "--data", str(data)]),
                    "classes")  # fmt: skip

    # not in a run folder and no --data: say what to pass
    one_line_error(runner.invoke(app, ["eval-probe", str(floats.parent.parent / "wrong" /
                                                         "samples.npz")]), "--data")  # fmt: skip


def test_evaluate_labels_its_numbers_honestly(data, tmp_path):
    images, labels = _real(50)
    report = evaluate(_write_samples(tmp_path / "s", images, labels), data)
    assert set(report["metrics"]) == {
        "probe_class_consistency", "FD_probe", "probe_held_out_accuracy"
    }  # fmt: skip
    assert "not FID" in report["note"]
    assert report["warnings"]  # 50 samples < the feature dimension
