"""Sources: an image folder labels its own classes, reads its validation split with the
training labels, and refuses layouts it cannot read in one line; the tar and hub sources."""

import subprocess
import sys
import tarfile
import time

import pytest

from spherear.data.prepare import prepare_dataset, read_info
from spherear.data.sources import SourceError

from .conftest import WNIDS, dataset_rows, make_folder


def test_a_folder_labels_its_own_sorted_classes_whatever_their_names(tmp_path):
    # the first and the last ImageNet class: labels 0 and 1 (not 0 and 999), ImageNet's names
    wnids = make_folder(
        tmp_path / "w", {"train/n15075141": ["x.png"], "train/n01440764": ["y.png"]}
    )
    prepare_dataset(f"folder:{wnids}", tmp_path / "w_out", resolution=32, progress=False)
    info = read_info(tmp_path / "w_out")
    assert (info["num_classes"], info["class_names"]) == (2, ["tench", "toilet tissue"])
    assert sorted((k, label) for k, label, *_ in dataset_rows(tmp_path / "w_out")) == [
        ("x.png", 1), ("y.png", 0)
    ]  # fmt: skip
    # any names: sorted, 0..K-1; a wnid-like name outside ImageNet is just a name
    plain = make_folder(
        tmp_path / "p", {"zebra": ["a.png"], "Ant": ["b.png"], "n99999999": ["c.png"]}
    )
    prepare_dataset(f"folder:{plain}", tmp_path / "p_out", resolution=32, progress=False)
    assert read_info(tmp_path / "p_out")["class_names"] == ["Ant", "n99999999", "zebra"]
    assert sorted(label for _, label, *_ in dataset_rows(tmp_path / "p_out")) == [0, 1, 2]


@pytest.mark.parametrize(("folder", "split"), [("val", "val"), ("validation", "validation")])
def test_validation_split_reads_val_or_validation_with_the_training_labels(tmp_path, folder, split):
    root = make_folder(tmp_path / "d", {"train/cat": ["1.png"], "train/dog": ["2.png"],
                                    f"{folder}/dog": ["3.png"]})  # fmt: skip
    prepare_dataset(f"folder:{root}", tmp_path / "v", resolution=32, split=split, progress=False)
    info = read_info(tmp_path / "v")
    assert info["settings"]["split"] == "validation"  # "val" is the same split
    assert info["class_names"] == ["cat", "dog"]  # from train/: dog keeps label 1
    assert [(k, label) for k, label, *_ in dataset_rows(tmp_path / "v")] == [("3.png", 1)]


def test_folder_splits_that_do_not_fit_are_one_line(tmp_path):
    flat = make_folder(tmp_path / "flat", {"cat": ["1.png"], "dog": ["2.png"]})
    with pytest.raises(SourceError, match="no val/ or validation/ folder for --split validation"):
        prepare_dataset(f"folder:{flat}", tmp_path / "o", split="val")
    odd = make_folder(tmp_path / "odd", {"train/cat": ["1.png"], "val/cow": ["2.png"]})
    with pytest.raises(SourceError, match="cow has no counterpart in"):
        prepare_dataset(f"folder:{odd}", tmp_path / "o", split="validation")
    with pytest.raises(SourceError, match="--split test: use 'train' or 'validation'"):
        prepare_dataset(f"folder:{odd}", tmp_path / "o", split="test")


def test_bad_sources_fail_in_one_line(tmp_path, image_folder):
    (image_folder / "train" / "n01484850").mkdir()
    with pytest.raises(SourceError, match="n01484850 has no images; remove it"):
        prepare_dataset(f"folder:{image_folder}", tmp_path / "o")
    with pytest.raises(SourceError, match="no such folder"):
        prepare_dataset(f"folder:{tmp_path / 'absent'}", tmp_path / "o")
    flat = tmp_path / "flat.tar"
    with tarfile.open(flat, "w") as t:
        t.add(image_folder / "train" / WNIDS[0] / "a_rgb.JPEG", arcname="a_rgb.JPEG")
    with pytest.raises(SourceError, match="not in the ImageNet layout"):
        prepare_dataset(f"tar:{flat}", tmp_path / "o")
    with pytest.raises(SourceError, match="unknown source; use hf:"):
        prepare_dataset("s3:bucket", tmp_path / "o")


@pytest.mark.slow
def test_offline_hub_source_fails_fast(tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PATH": "/usr/bin:/bin"}
    # the bound is the start-up of a spherear process now (a loaded machine slows both), plus
    # seconds: waiting on the network would take retries of tens of seconds each
    start = time.time()
    subprocess.run([sys.executable, "-m", "spherear", "info", "--help"], capture_output=True,
                   env=env, check=True)  # fmt: skip
    startup = time.time() - start
    start = time.time()
    out = subprocess.run(
        [sys.executable, "-m", "spherear", "prepare-data", "--source", "hf:ILSVRC/imagenet-1k",
         "--out", str(tmp_path / "x")],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert time.time() - start < 2 * startup + 5
    assert out.returncode == 2 and "HF_HUB_OFFLINE=1" in out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) <= 2


def test_hub_source_reads_a_dataset_by_path(tmp_path):
    """The hf: path goes through datasets.load_dataset; a local Parquet dataset stands in
    for the hub here (no network)."""
    first = prepare_dataset("synthetic", tmp_path / "syn", resolution=16, num_images=30,
                            progress=False)  # fmt: skip
    again = prepare_dataset(f"hf:{first.out / 'data'}", tmp_path / "via_hub", resolution=16,
                            progress=False)  # fmt: skip
    assert again.num_images == 30
    ours = [(r[1], r[4]) for r in dataset_rows(first.out)]
    theirs = [(r[1], r[4]) for r in dataset_rows(again.out)]
    assert ours == theirs
    assert read_info(again.out)["class_names"][:2] == ["disk", "ring"]
