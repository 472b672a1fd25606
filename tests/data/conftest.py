"""Image folders and tars in the layouts prepare-data reads, and the rows it writes."""

import io
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from spherear.data.prepare import shard_files

from .inputs import tar_bytes

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
    """ILSVRC2012_img_train.tar's layout: a tar of one <wnid>.tar per class."""
    path = tmp_path / "ILSVRC2012_img_train.tar"
    path.write_bytes(tar_bytes({f"{wnid}.tar": tar_bytes(files)
                                for wnid, files in _files().items()}))  # fmt: skip
    return path


def dataset_rows(folder: Path) -> list[tuple]:
    rows = []
    for shard in shard_files(folder):
        table = pq.read_table(shard).to_pylist()
        for r in table:
            pixels = np.asarray(Image.open(io.BytesIO(r["image"]["bytes"])))
            rows.append((r["key"], r["label"], r["class_name"], pixels.shape, pixels.tobytes()))
    return rows


def make_folder(root: Path, layout: dict[str, list[str]]) -> Path:
    """``layout``: "split/class" -> image file names."""
    for where, names in layout.items():
        (root / where).mkdir(parents=True)
        for name in names:
            (root / where / name).write_bytes(_image_bytes("RGB", "PNG", len(name)))
    return root
