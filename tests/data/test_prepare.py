"""prepare-data: sources agree, bad input is handled, runs are idempotent and resumable."""

import io
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from spherear.data import prepare as prepare_module
from spherear.data.prepare import prepare_dataset, read_info, shard_files
from spherear.data.sources import SourceError

WNIDS = ["n01440764", "n01443537"]  # ImageNet labels 0 and 1


def _image_bytes(mode: str, fmt: str, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    rgb = Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8))
    image = {"RGB": rgb, "CMYK": rgb.convert("CMYK"), "L": rgb.convert("L"),
             "P": rgb.convert("P"), "RGBA": rgb.convert("RGBA")}[mode]  # fmt: skip
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def _files() -> dict[str, dict[str, bytes]]:
    return {
        WNIDS[0]: {
            "a_rgb.JPEG": _image_bytes("RGB", "JPEG", 0),
            "b_cmyk.JPEG": _image_bytes("CMYK", "JPEG", 1),
            "c_corrupt.JPEG": b"\xff\xd8\xff\xe0 this is not a jpeg",
        },
        WNIDS[1]: {
            "d_gray.png": _image_bytes("L", "PNG", 2),
            "e_palette.png": _image_bytes("P", "PNG", 3),
            "f_rgba.png": _image_bytes("RGBA", "PNG", 4),
        },
    }


@pytest.fixture
def image_folder(tmp_path) -> Path:
    root = tmp_path / "imagenet"
    for wnid, files in _files().items():
        (root / "train" / wnid).mkdir(parents=True)
        for name, data in files.items():
            (root / "train" / wnid / name).write_bytes(data)
    return root


@pytest.fixture
def image_tar(tmp_path) -> Path:
    path = tmp_path / "ILSVRC2012_img_train.tar"
    with tarfile.open(path, "w") as outer:
        for wnid, files in _files().items():
            buffer = io.BytesIO()
            with tarfile.open(fileobj=buffer, mode="w") as inner:
                for name, data in files.items():
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    inner.addfile(info, io.BytesIO(data))
            info = tarfile.TarInfo(f"{wnid}.tar")
            info.size = buffer.tell()
            buffer.seek(0)
            outer.addfile(info, buffer)
    return path


def _rows(folder: Path) -> list[tuple]:
    rows = []
    for shard in shard_files(folder):
        table = pq.read_table(shard).to_pylist()
        for r in table:
            pixels = np.asarray(Image.open(io.BytesIO(r["image"]["bytes"])))
            rows.append((r["key"], r["label"], r["class_name"], pixels.shape, pixels.tobytes()))
    return rows


def test_folder_and_tar_give_the_same_dataset(tmp_path, image_folder, image_tar):
    a = prepare_dataset(f"folder:{image_folder}", tmp_path / "a", resolution=32, progress=False)
    b = prepare_dataset(f"tar:{image_tar}", tmp_path / "b", resolution=32, progress=False)
    assert (a.num_images, a.num_bad) == (b.num_images, b.num_bad) == (5, 1)
    assert _rows(tmp_path / "a") == _rows(tmp_path / "b")
    rows = _rows(tmp_path / "a")
    assert [(k, label) for k, label, *_ in rows] == [
        ("a_rgb.JPEG", 0), ("b_cmyk.JPEG", 0),
        ("d_gray.png", 1), ("e_palette.png", 1), ("f_rgba.png", 1),
    ]  # fmt: skip
    assert all(shape == (40, 56, 3) for *_, shape, _ in rows)  # all RGB, small ones kept
    assert rows[0][2] == "tench"
    report = (tmp_path / "a" / "bad_images.txt").read_text().splitlines()
    assert len(report) == 1 and "c_corrupt.JPEG" in report[0]
    info = read_info(tmp_path / "a")
    assert info["num_bad"] == 1 and info["num_classes"] == 2
    assert info["class_names"] == ["tench", "goldfish"]


def _folder(root: Path, layout: dict[str, list[str]]) -> Path:
    """``layout``: "split/class" -> image file names."""
    for where, names in layout.items():
        (root / where).mkdir(parents=True)
        for name in names:
            (root / where / name).write_bytes(_image_bytes("RGB", "PNG", len(name)))
    return root


def test_a_folder_labels_its_own_sorted_classes_whatever_their_names(tmp_path):
    # the first and the last ImageNet class: labels 0 and 1 (not 0 and 999), ImageNet's names
    wnids = _folder(tmp_path / "w", {"train/n15075141": ["x.png"], "train/n01440764": ["y.png"]})
    prepare_dataset(f"folder:{wnids}", tmp_path / "w_out", resolution=32, progress=False)
    info = read_info(tmp_path / "w_out")
    assert (info["num_classes"], info["class_names"]) == (2, ["tench", "toilet tissue"])
    assert sorted((k, label) for k, label, *_ in _rows(tmp_path / "w_out")) == [
        ("x.png", 1), ("y.png", 0)
    ]  # fmt: skip
    # any names: sorted, 0..K-1; a wnid-like name outside ImageNet is just a name
    plain = _folder(tmp_path / "p", {"zebra": ["a.png"], "Ant": ["b.png"], "n99999999": ["c.png"]})
    prepare_dataset(f"folder:{plain}", tmp_path / "p_out", resolution=32, progress=False)
    assert read_info(tmp_path / "p_out")["class_names"] == ["Ant", "n99999999", "zebra"]
    assert sorted(label for _, label, *_ in _rows(tmp_path / "p_out")) == [0, 1, 2]


@pytest.mark.parametrize(("folder", "split"), [("val", "val"), ("validation", "validation")])
def test_validation_split_reads_val_or_validation_with_the_training_labels(tmp_path, folder, split):
    root = _folder(tmp_path / "d", {"train/cat": ["1.png"], "train/dog": ["2.png"],
                                    f"{folder}/dog": ["3.png"]})  # fmt: skip
    prepare_dataset(f"folder:{root}", tmp_path / "v", resolution=32, split=split, progress=False)
    info = read_info(tmp_path / "v")
    assert info["settings"]["split"] == "validation"  # "val" is the same split
    assert info["class_names"] == ["cat", "dog"]  # from train/: dog keeps label 1
    assert [(k, label) for k, label, *_ in _rows(tmp_path / "v")] == [("3.png", 1)]


def test_folder_splits_that_do_not_fit_are_one_line(tmp_path):
    flat = _folder(tmp_path / "flat", {"cat": ["1.png"], "dog": ["2.png"]})
    with pytest.raises(SourceError, match="no val/ or validation/ folder for --split validation"):
        prepare_dataset(f"folder:{flat}", tmp_path / "o", split="val")
    odd = _folder(tmp_path / "odd", {"train/cat": ["1.png"], "val/cow": ["2.png"]})
    with pytest.raises(SourceError, match="cow has no counterpart in"):
        prepare_dataset(f"folder:{odd}", tmp_path / "o", split="validation")
    with pytest.raises(SourceError, match="--split test: use 'train' or 'validation'"):
        prepare_dataset(f"folder:{odd}", tmp_path / "o", split="test")


def test_images_are_shrunk_to_the_short_side_the_crops_need_never_enlarged(tmp_path):
    root = tmp_path / "imgs" / "train" / WNIDS[0]
    root.mkdir(parents=True)
    Image.new("RGB", (300, 200), (10, 20, 30)).save(root / "big.png")
    Image.new("RGB", (30, 20), (10, 20, 30)).save(root / "small.png")
    prepare_dataset(f"folder:{tmp_path / 'imgs'}", tmp_path / "out", resolution=64,
                    progress=False)  # fmt: skip
    sizes = {k: shape for k, _, _, shape, _ in _rows(tmp_path / "out")}
    assert sizes == {"big.png": (80, 120, 3), "small.png": (20, 30, 3)}  # 64 / 0.8 = 80


def test_synthetic_is_deterministic_and_balanced(tmp_path):
    for name in ("x", "y"):
        prepare_dataset("synthetic", tmp_path / name, resolution=16, num_images=1200,
                        num_proc=2, progress=False)  # fmt: skip
    files_x, files_y = shard_files(tmp_path / "x"), shard_files(tmp_path / "y")
    assert [f.read_bytes() for f in files_x] == [f.read_bytes() for f in files_y]
    labels = [r[1] for r in _rows(tmp_path / "x")]
    assert np.bincount(labels).tolist() == [120] * 10
    val = prepare_dataset("synthetic", tmp_path / "v", resolution=16, num_images=10,
                          split="validation", progress=False)  # fmt: skip
    assert _rows(val.out)[0][4] != _rows(tmp_path / "x")[0][4]


def test_existing_output_is_reused_or_refused(tmp_path):
    first = prepare_dataset("synthetic", tmp_path / "d", resolution=16, num_images=20,
                            progress=False)  # fmt: skip
    again = prepare_dataset("synthetic", tmp_path / "d", resolution=16, num_images=20,
                            progress=False)  # fmt: skip
    assert not first.reused and again.reused and "reusing" in again.summary()
    with pytest.raises(SourceError, match="prepared with other settings"):
        prepare_dataset("synthetic", tmp_path / "d", resolution=16, num_images=30,
                        progress=False)  # fmt: skip
    (tmp_path / "mine").mkdir()
    with pytest.raises(SourceError, match="exists but is not a prepared dataset"):
        prepare_dataset("synthetic", tmp_path / "mine", resolution=16, num_images=20)


def test_an_interrupted_run_resumes_to_the_same_result(tmp_path, monkeypatch):
    real = prepare_module._write_shard
    calls = []

    def crash_after_two(task):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(task[1].index)
        return real(task)

    monkeypatch.setattr(prepare_module, "_write_shard", crash_after_two)
    monkeypatch.setattr("spherear.data.sources.SHARD_SIZE", 10)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset("synthetic", tmp_path / "d", resolution=16, num_images=50,
                        progress=False)  # fmt: skip
    assert not (tmp_path / "d").exists()  # nothing half-written under the final name
    assert len(list((tmp_path / ".d.partial" / "data").glob("*.parquet"))) == 2
    monkeypatch.setattr(prepare_module, "_write_shard", real)
    calls.clear()
    resumed = prepare_dataset("synthetic", tmp_path / "d", resolution=16, num_images=50,
                              progress=False)  # fmt: skip
    clean = prepare_dataset("synthetic", tmp_path / "c", resolution=16, num_images=50,
                            progress=False)  # fmt: skip
    assert resumed.num_images == 50 and not (tmp_path / ".d.partial").exists()
    assert [f.read_bytes() for f in shard_files(resumed.out)] == [
        f.read_bytes() for f in shard_files(clean.out)
    ]


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


def test_offline_hub_source_fails_fast(tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PATH": "/usr/bin:/bin"}
    start = time.time()
    out = subprocess.run(
        [sys.executable, "-m", "spherear", "prepare-data", "--source", "hf:ILSVRC/imagenet-1k",
         "--out", str(tmp_path / "x")],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert time.time() - start < 5
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
    ours = [(r[1], r[4]) for r in _rows(first.out)]
    theirs = [(r[1], r[4]) for r in _rows(again.out)]
    assert ours == theirs
    assert read_info(again.out)["class_names"][:2] == ["disk", "ring"]


@pytest.mark.parametrize("mode", ["I;16", "I"])
def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path, mode):
    """PIL's own conversion clips 16-bit values to 255 (near-white); they are scaled."""
    values = np.linspace(0, 65535, 40 * 56).reshape(40, 56).round().astype(np.uint16)
    image = Image.fromarray(values if mode == "I;16" else values.astype(np.int32))
    assert image.mode == mode
    buffer = io.BytesIO()
    image.save(buffer, format="PNG" if mode == "I;16" else "TIFF")
    data, _ = prepare_module.encode_image(buffer.getvalue(), short_side=64)
    pixels = np.asarray(Image.open(io.BytesIO(data)))
    assert pixels.shape == (40, 56, 3)
    expected = np.rint(values / 257.0)
    assert np.abs(pixels[..., 0].astype(int) - expected).max() <= 1
    assert abs(pixels.mean() - 127.5) < 1
