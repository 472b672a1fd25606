"""The README's "Train on your own images" commands, run as written on a small image folder
stored class by class: samples of every class, class names from the data, held-out sets
that cover every class, and train-ar refusing a class count or labels that do not fit."""

import json
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from spherear.cli import app
from spherear.config import load_recipe, recipe_to_toml
from spherear.data.synthetic import CLASS_NAMES, render
from spherear.eval.probe import ProbeSettings, load_or_train

from .conftest import ROOT, file_stamps, one_line_error

runner = CliRunner()
CLASSES = sorted(CLASS_NAMES[:8])  # plain names, sorted: the labels' order
PER_CLASS = 16  # 128 training images
# the shipped recipes shrunk to seconds: smaller models, a few steps, no TensorBoard
SMALL_VAE = ["vae.channels=[16, 32, 32]", "vae.num_heads=2", "train.max_steps=3",
             "train.log_with=none"]  # fmt: skip
SMALL_AR = ["ar.depth=2", "ar.num_heads=2", "ar.width=32", "ar.head_depth=2",
            "ar.head_width=32", "ar.head_groups=1", "sample.steps=2"]  # fmt: skip
FAST = {"folder_vae.toml": SMALL_VAE, "folder.toml": SMALL_VAE + SMALL_AR}


def readme_commands() -> list[list[str]]:
    """The argv of each command in the section's first bash block."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Train on your own images", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [shlex.split(line.split(" #")[0]) for line in block.splitlines() if line.strip()]


def write_image_folder(root: Path, per_class: int, stream: int) -> None:
    """Synthetic shapes as PNG files, one folder per class, numbered within the class."""
    for name in CLASSES:
        label = CLASS_NAMES.index(name)
        (root / name).mkdir(parents=True)
        for k in range(per_class):
            pixels, _ = render(stream, k * len(CLASS_NAMES) + label, 32)
            Image.fromarray(pixels).save(root / name / f"{k:04d}.png")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A user's folder after the README commands: returns it and each command's result."""
    root = tmp_path_factory.mktemp("own_images")
    write_image_folder(root / "data" / "my_images" / "train", PER_CLASS, stream=0)
    write_image_folder(root / "data" / "my_images" / "val", 2, stream=1)
    (root / "recipes").mkdir()
    for name, overrides in FAST.items():
        recipe = load_recipe(ROOT / "recipes" / name, overrides)
        (root / "recipes" / name).write_text(recipe_to_toml(recipe))
    results = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        for argv in readme_commands():
            assert argv[0] == "spherear", argv
            if argv[1] == "eval-probe":
                # a probe of a few steps in its cache (750 steps would take 30 s): eval-probe
                # reuses whatever probe of this data it finds there
                load_or_train("data/my_images32", 32, ProbeSettings(steps=2), progress=False)
                results["data before eval-probe"] = file_stamps(root / "data" / "my_images32")
            results[argv[1]] = runner.invoke(app, argv[1:])
            assert results[argv[1]].exit_code == 0, (argv, results[argv[1]].output)
    return root, results


def test_readme_own_images_commands_run_verbatim(workspace):
    root, results = workspace
    samples = root / "runs" / "my-ar" / "samples" / "n80-cfg6-linear-steps2-sde-balanced-seed0"
    images = np.load(samples / "samples.npz")["arr_0"]
    labels = np.load(samples / "labels.npy")
    assert images.shape == (80, 32, 32, 3)
    assert np.bincount(labels).tolist() == [10] * 8  # 8 classes, from the data
    assert json.loads((samples / "settings.json").read_text())["class_names"] == CLASSES
    run = load_recipe(root / "runs" / "my-ar" / "recipe.toml")
    assert run.ar.num_classes == 8 and list(run.ar.class_names) == CLASSES

    report = json.loads((samples / "eval-probe.json").read_text())
    assert list(report["per_class"]) == CLASSES
    assert all(c["samples"] == 10 for c in report["per_class"].values())
    # a fifth of 128 images held out, 25: 3.125 a class, the one spare to one class
    held = sorted(c["held_out_images"] for c in report["per_class"].values())
    assert held == [3] * 7 + [4]
    table = results["eval-probe"].stdout
    assert all(re.search(rf"^{name} +10 ", table, re.M) for name in CLASSES), table
    assert "warning: the probe recognises only" in results["eval-probe"].stderr  # 2 steps
    assert file_stamps(root / "data" / "my_images32") == results["data before eval-probe"]


def test_train_vae_holds_out_every_class(workspace):
    root, _ = workspace
    held_out = json.loads((root / "runs" / "my-vae" / "held_out.json").read_text())
    # a tenth of 128 images, 12: 1.5 a class, so four classes give 2 and four give 1
    assert list(held_out["per_class"]) == CLASSES
    assert sorted(held_out["per_class"].values()) == [1] * 4 + [2] * 4
    assert len(held_out["indices"]) == 12
    # the grid's first row: one image of each of 8 classes (class k is stored at k*16..)
    assert sorted(i // PER_CLASS for i in held_out["indices"][:8]) == list(range(8))


def test_a_class_count_that_disagrees_with_the_data_stops_before_any_work(workspace, monkeypatch):
    root, _ = workspace
    monkeypatch.chdir(root)
    for wrong in (10, 5):  # the null class would be trained as a class / IndexError
        result = runner.invoke(app, ["train-ar", "--recipe", "recipes/folder.toml", "--set",
                                     f"ar.num_classes={wrong}", "--set",
                                     "run.output_dir=runs/x"])  # fmt: skip
        one_line_error(result, f"ar.num_classes = {wrong}", "8 classes",
                        "data/my_images32_latents/manifest.json")  # fmt: skip
        assert not (root / "runs" / "x").exists()


def test_labels_outside_the_class_count_stop_before_training(workspace, monkeypatch):
    root, _ = workspace
    monkeypatch.chdir(root)
    shutil.copytree(root / "data" / "my_images32", root / "data" / "six")
    info = json.loads((root / "data" / "six" / "info.json").read_text())
    info.update(num_classes=6, class_names=CLASSES[:6])  # damaged: labels 6 and 7 are left
    (root / "data" / "six" / "info.json").write_text(json.dumps(info))
    result = runner.invoke(app, ["train-ar", "--recipe", "recipes/folder.toml", "--set",
                                 "train.inputs=images", "--set", "data.prepared=data/six",
                                 "--set", "run.output_dir=runs/six"])  # fmt: skip
    one_line_error(result, "data/six", "32 labels lie outside 0..5", "prepare-data")
    assert not (root / "runs" / "six").exists()
