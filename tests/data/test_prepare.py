"""prepare-data: sources agree, bad input is handled, runs are idempotent and resumable."""

import io

import numpy as np
import pytest
from PIL import Image

from spherear.data import prepare as prepare_module
from spherear.data.prepare import prepare_dataset, read_info, shard_files
from spherear.data.sources import SourceError

from .conftest import WNIDS, dataset_rows


def test_folder_and_tar_give_the_same_dataset(tmp_path, image_folder, image_tar):
    a = prepare_dataset(f"folder:{image_folder}", tmp_path / "a", resolution=32, progress=False)
    b = prepare_dataset(f"tar:{image_tar}", tmp_path / "b", resolution=32, progress=False)
    assert (a.num_images, a.num_bad) == (b.num_images, b.num_bad) == (5, 1)
    assert dataset_rows(tmp_path / "a") == dataset_rows(tmp_path / "b")
    rows = dataset_rows(tmp_path / "a")
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


def test_images_are_shrunk_to_the_short_side_the_crops_need_never_enlarged(tmp_path):
    root = tmp_path / "imgs" / "train" / WNIDS[0]
    root.mkdir(parents=True)
    Image.new("RGB", (300, 200), (10, 20, 30)).save(root / "big.png")
    Image.new("RGB", (30, 20), (10, 20, 30)).save(root / "small.png")
    prepare_dataset(f"folder:{tmp_path / 'imgs'}", tmp_path / "out", resolution=64,
                    progress=False)  # fmt: skip
    sizes = {k: shape for k, _, _, shape, _ in dataset_rows(tmp_path / "out")}
    assert sizes == {"big.png": (80, 120, 3), "small.png": (20, 30, 3)}  # 64 / 0.8 = 80


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
