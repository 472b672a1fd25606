"""Image folders and archives as a careless or hostile user leaves them: only regular files
are read, with bounded reads; every skipped entry is listed with its reason; hidden folders
are not classes; EXIF orientation is applied; a class left without images, a class twice
and a name that is not UTF-8 stop in one line. Every tree is built here."""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from spherear.cli import app

from ..conftest import ROOT
from .inputs import png as _png
from .inputs import rotated_jpeg, tar_bytes

runner = CliRunner()


def one_line_error(result, *words: str) -> None:
    """Exit status 2 and, after the progress bars that share stderr, one error line naming
    each of ``words``; no traceback."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), result.stderr
    for word in words:
        assert word in last, last


def _prepare(source: str, out: Path):
    return runner.invoke(app, ["prepare-data", "--source", source, "--out", str(out),
                               "--resolution", "16"])  # fmt: skip


def _rows(out: Path) -> list[dict]:
    return [row for f in sorted((out / "data").glob("*.parquet"))
            for row in pq.read_table(f).to_pylist()]  # fmt: skip


def test_a_folder_of_odd_entries(tmp_path):
    root = tmp_path / "images"
    for name in ("cat", "dog"):
        (root / name).mkdir(parents=True)
        (root / name / "good.png").write_bytes(_png())
    (root / "cat" / "photo.jpg").write_bytes(rotated_jpeg())
    os.mkfifo(root / "cat" / "fifo.png")  # reading it would block forever
    (root / "cat" / "zero.png").symlink_to("/dev/zero")  # would never end
    (root / "dog" / os.fsdecode(b"caf\xe9.png")).write_bytes(_png())  # Latin-1, not UTF-8
    (root / ".hidden_class").mkdir()
    (root / ".hidden_class" / "x.png").write_bytes(_png())
    start = time.perf_counter()
    result = _prepare(f"folder:{root}", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert time.perf_counter() - start < 120  # a FIFO read would block for ever
    info = json.loads((tmp_path / "out" / "info.json").read_text())
    assert info["class_names"] == ["cat", "dog"] and info["num_images"] == 3
    listed = (tmp_path / "out" / "bad_images.txt").read_text().splitlines()
    assert sorted(listed) == sorted([
        "cat/fifo.png\tskipped: not a regular file (a device, FIFO or socket, or a link to one)",
        "cat/zero.png\tskipped: not a regular file (a device, FIFO or socket, or a link to one)",
        "dog/'caf\\udce9.png'\tskipped: its name is not UTF-8; rename it",
    ])  # fmt: skip
    photo = next(r for r in _rows(tmp_path / "out") if r["key"] == "photo.jpg")
    upright = Image.open(io.BytesIO(photo["image"]["bytes"])).convert("RGB")
    assert upright.size == (20, 40)
    assert upright.getpixel((10, 5))[0] > 200 and upright.getpixel((10, 35))[2] > 200


@pytest.mark.parametrize(
    "make,words",
    [
        (lambda c: os.mkfifo(c / "only.png"), "class empty has no readable image (1 skipped"),
        (lambda c: (c / "x.png").symlink_to("/dev/zero"), "class empty has no readable image"),
    ],
    ids=["only-a-fifo", "only-a-device"],
)
def test_a_class_left_without_images_stops(tmp_path, make, words):
    root = tmp_path / "images"
    (root / "full").mkdir(parents=True)
    (root / "full" / "a.png").write_bytes(_png())
    (root / "empty").mkdir()
    make(root / "empty")
    one_line_error(_prepare(f"folder:{root}", tmp_path / "out"), words)
    assert not (tmp_path / "out").exists()


def test_a_class_name_that_is_not_utf8_stops(tmp_path):
    root = tmp_path / "images"
    (root / os.fsdecode(b"caf\xe9")).mkdir(parents=True)
    (root / os.fsdecode(b"caf\xe9") / "a.png").write_bytes(_png())
    one_line_error(_prepare(f"folder:{root}", tmp_path / "out"), "is not UTF-8; rename it")


def _imagenet_tar(path: Path, inner: dict[str, bytes]) -> Path:
    path.write_bytes(tar_bytes(inner))
    return path


def test_a_garbage_inner_tar_is_named_and_a_rerun_after_the_fix_reads_it(tmp_path):
    good = tar_bytes({"a.JPEG": _png(), "b.JPEG": _png((0, 0, 0))})
    tar = _imagenet_tar(tmp_path / "train.tar", {
        "n01440764.tar": good,
        "n01443537.tar": b"this is not a tar at all " * 40,
        "n01484850.tar": tar_bytes({}),  # a class with no image at all
    })  # fmt: skip
    one_line_error(_prepare(f"tar:{tar}", tmp_path / "out"),
                   "class n01443537.tar and 1 more has no readable image (1 skipped",
                   "not a readable tar")  # fmt: skip
    # the user does what the line says; the classes refused are read again, not resumed
    _imagenet_tar(tar, {"n01440764.tar": good, "n01443537.tar": good, "n01484850.tar": good})
    result = _prepare(f"tar:{tar}", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "out" / "info.json").read_text())["num_images"] == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "train.tar"]  # no .partial


def test_a_class_twice_in_a_tar_stops(tmp_path):
    tar = _imagenet_tar(tmp_path / "train.tar", {
        "x/n01440764.tar": tar_bytes({"a.JPEG": _png()}),
        "y/n01440764.tar": tar_bytes({"b.JPEG": _png()}),
    })  # fmt: skip
    one_line_error(
        _prepare(f"tar:{tar}", tmp_path / "out"),
        "x/n01440764.tar and y/n01440764.tar are both class 'n01440764'",
    )


def test_train_vae_on_too_few_images_is_one_line(tmp_path):
    result = runner.invoke(app, ["prepare-data", "--source", "synthetic", "--out",
                                 str(tmp_path / "six"), "--num-images", "6", "--resolution",
                                 "32"])  # fmt: skip
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["train-vae", "-r", str(ROOT / "recipes" / "tiny_vae.toml"),
                                 "--set", f"data.prepared='{tmp_path / 'six'}'", "--set",
                                 f"run.output_dir='{tmp_path / 'run'}'"])  # fmt: skip
    one_line_error(result, "6 images, but train-vae holds 8 out")
