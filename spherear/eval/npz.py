"""The inputs of ``eval-fid``: ADM-style ``.npz`` files and prepared datasets, read in
slices so that 50,000 images never have to sit in memory (or in every process) at once.

A samples ``.npz`` holds ``arr_0`` (N x H x W x 3 uint8, RGB); an ADM reference batch adds
``mu``/``sigma`` (pool features) and ``mu_s``/``sigma_s`` (spatial features).
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from spherear.errors import SpherearError

LAYOUT = "expected arr_0 = N x H x W x 3 uint8 RGB images, as `spherear sample` writes"
# ADM's stored statistics and their shapes: Inception pool (2048) and spatial (2023) features
STAT_SHAPES = {"mu": (2048,), "sigma": (2048, 2048), "mu_s": (2023,), "sigma_s": (2023, 2023)}


def file_sha256(path: str | Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _open_zip(path: Path) -> zipfile.ZipFile:
    if not path.is_file():
        raise SpherearError(f"{path}: no such file; {LAYOUT}")
    try:
        return zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise SpherearError(f"{path}: not an .npz file (not a zip archive); {LAYOUT}") from None


def npy_header(
    path: Path, archive: zipfile.ZipFile, name: str
) -> tuple[tuple, bool, np.dtype, int]:
    """(shape, Fortran order, dtype, header bytes) of the ``.npy`` member ``name``, read from
    its first bytes: nothing is inflated past the header. A member whose zip entry inflates
    to more or fewer bytes than its header says is refused (a zip bomb, or damage); an
    object array (a pickle) is left for the caller to refuse by its dtype."""
    info = archive.getinfo(name)
    try:
        with archive.open(info) as f:
            read_header = {
                (1, 0): np.lib.format.read_array_header_1_0,
                (2, 0): np.lib.format.read_array_header_2_0,
            }.get(np.lib.format.read_magic(f))
            if read_header is None:
                raise ValueError("unknown .npy version")
            shape, fortran, dtype = read_header(f)
            header_size = f.tell()
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise SpherearError(f"{path}: {name} is not a readable .npy ({e}); {LAYOUT}") from None
    needed = header_size + math.prod(shape) * dtype.itemsize
    if not dtype.hasobject and info.file_size != needed:  # objects: refused by the caller
        raise SpherearError(
            f"{path}: {name} inflates to {info.file_size} bytes but its header ({dtype}, shape "
            f"{tuple(shape)}) needs {needed}; the file is damaged or crafted: write it again"
        )
    return tuple(shape), fortran, dtype, header_size


class NpzImages:
    """``arr_0`` of an ``.npz``, validated from its header and read by index range:
    memory-mapped when the archive stores it uncompressed (``np.savez``, ADM's files), else
    inflated as a stream, so memory stays bounded by the range read."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        with _open_zip(self.path) as archive:
            if "arr_0.npy" not in archive.namelist():
                keys = ", ".join(n.removesuffix(".npy") for n in archive.namelist()) or "none"
                raise SpherearError(f"{self.path}: no arr_0 array (it holds {keys}); {LAYOUT}")
            info = archive.getinfo("arr_0.npy")
            shape, fortran, dtype, header_size = npy_header(self.path, archive, "arr_0.npy")
        if dtype != np.uint8 or len(shape) != 4 or shape[-1] != 3 or fortran:
            raise SpherearError(
                f"{self.path}: arr_0 is {dtype} with shape {tuple(shape)}"
                f"{' (Fortran order)' if fortran else ''}; {LAYOUT}"
            )
        if not all(shape):
            raise SpherearError(f"{self.path}: arr_0 holds no images (shape {tuple(shape)})")
        self.shape: tuple[int, int, int, int] = tuple(shape)
        self._stored = info.compress_type == zipfile.ZIP_STORED
        self._header_size = header_size
        self._offset = self._data_offset(info) + header_size if self._stored else 0
        needed = self._offset + int(np.prod(self.shape))
        if self._stored and needed > self.path.stat().st_size:
            raise SpherearError(
                f"{self.path}: truncated ({self.path.stat().st_size} bytes, arr_0 needs "
                f"{needed}); write or copy it again"
            )
        self._stream: tuple[zipfile.ZipFile, object, int] | None = None  # archive, member, row
        self._sha256: str | None = None

    def _data_offset(self, info: zipfile.ZipInfo) -> int:
        """Where a stored member's bytes start: after its local header, whose name and
        extra-field lengths may differ from the central directory's."""
        with open(self.path, "rb") as f:
            f.seek(info.header_offset)
            header = f.read(30)
        name_len, extra_len = struct.unpack("<HH", header[26:30])
        return info.header_offset + 30 + name_len + extra_len

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def resolution(self) -> tuple[int, int]:
        return self.shape[1], self.shape[2]

    def read(self, start: int, stop: int) -> np.ndarray:
        """Images ``start`` to ``stop`` (exclusive), N x H x W x 3 uint8."""
        row = int(np.prod(self.shape[1:]))
        if self._stored:
            images = np.memmap(self.path, np.uint8, "r", self._offset, (len(self) * row,))
            return np.array(images[start * row : stop * row]).reshape(-1, *self.shape[1:])
        return self._inflate(start, stop, row)

    def _inflate(self, start: int, stop: int, row: int) -> np.ndarray:
        """Compressed (np.savez_compressed): no slicing in place, so the member is inflated
        as a stream, kept open for the next range; a range behind it starts over."""
        if self._stream is None or self._stream[2] > start:
            self.close()
            archive = zipfile.ZipFile(self.path)
            member = archive.open("arr_0.npy")
            member.read(self._header_size)
            self._stream = (archive, member, 0)
        archive, member, at = self._stream
        while at < start:  # skipped in slices of bounded size
            step = min(start - at, max(1, (4 << 20) // row))
            member.read(step * row)
            at += step
        data = member.read((stop - start) * row)
        self._stream = (archive, member, stop)
        return np.frombuffer(data, np.uint8).reshape(-1, *self.shape[1:]).copy()

    def close(self) -> None:
        if self._stream is not None:
            self._stream[1].close()
            self._stream[0].close()
            self._stream = None

    def cache_key(self) -> str:
        if self._sha256 is None:  # hashing 10 GB takes seconds: once per evaluation
            self._sha256 = file_sha256(self.path)
        return self._sha256


class PreparedReference:
    """A folder made by ``prepare-data``, centre-cropped (ADM's crop) to the samples'
    resolution."""

    def __init__(self, folder: str | Path, size: int):
        from spherear.data.prepare import PreparedImages, read_info, shard_files

        self.folder, self.size = Path(folder), size
        self.info = read_info(folder)
        self.images = PreparedImages(folder)
        # the folder's content changes only by re-preparing, which rewrites info.json and
        # the shards; hashing gigabytes of Parquet for every evaluation would be wasteful
        identity = {
            "info": self.info,
            "shards": [(f.name, f.stat().st_size) for f in shard_files(folder)],
            "crop": size,
        }
        self._key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()

    def __len__(self) -> int:
        return len(self.images)

    def labels(self) -> np.ndarray:
        return self.images.labels()

    @property
    def resolution(self) -> tuple[int, int]:
        return self.size, self.size

    def read(self, start: int, stop: int) -> np.ndarray:
        from spherear.data.transforms import center_crop

        return np.stack(
            [np.asarray(center_crop(self.images[i][0], self.size)) for i in range(start, stop)]
        )

    def cache_key(self) -> str:
        return self._key


@dataclass
class Reference:
    """What ``--ref`` resolved to: images (if any) and any stored statistics."""

    path: Path
    images: NpzImages | PreparedReference | None
    stats: dict[str, np.ndarray] = field(default_factory=dict)

    def describe(self) -> str:
        """``PATH (what it holds)``: the path first, so a model card can keep its file name."""
        parts = [f"{len(self.images)} images" if self.images is not None else "no images"]
        if isinstance(self.images, PreparedReference):
            parts.insert(0, f"prepared dataset, centre crop {self.images.size}")
        if self.stats:
            parts.append(f"stored {'/'.join(self.stats)}")
        return f"{self.path} ({', '.join(parts)})"


def _check_statistics(path: Path, stats: dict[str, np.ndarray]) -> None:
    """Stored means and covariances that a Fréchet distance can use: finite, and each
    covariance symmetric positive semi-definite (else FID comes out negative or fails)."""
    for key, value in stats.items():
        if not np.isfinite(value).all():
            raise SpherearError(
                f"{path}: stored '{key}' holds NaN or infinite values; download the "
                "reference batch again"
            )
    for key in ("sigma", "sigma_s"):
        if key not in stats:
            continue
        sigma = stats[key]
        lowest = np.linalg.eigvalsh((sigma + sigma.T) / 2)[0]
        if not np.allclose(sigma, sigma.T, atol=1e-6 * np.abs(sigma).max()) or (
            lowest < -1e-6 * max(np.abs(sigma).max(), 1e-12)
        ):
            raise SpherearError(
                f"{path}: stored '{key}' is not a covariance (not symmetric positive "
                f"semi-definite; lowest eigenvalue {lowest:.3g}); download the reference "
                "batch again"
            )


def open_reference(path: str | Path, resolution: tuple[int, int]) -> Reference:
    """An ADM reference batch, a samples-style ``.npz`` or a prepared dataset folder,
    checked against the samples' ``resolution``."""
    path = Path(path)
    if not path.exists():
        raise SpherearError(
            f"reference {path} does not exist; pass --ref with an ADM reference batch "
            "(VIRTUAL_imagenet256_labeled.npz), a samples .npz or a prepare-data folder"
        )
    if path.is_dir():
        if resolution[0] != resolution[1]:
            raise SpherearError(f"samples are {resolution[0]}x{resolution[1]}; need square")
        return Reference(path, PreparedReference(path, resolution[0]))
    with _open_zip(path) as archive:
        names = {n.removesuffix(".npy") for n in archive.namelist()}
    stats = {}
    if {"mu", "sigma"} <= names:
        # shapes from the headers first: nothing is inflated that cannot be used
        with _open_zip(path) as archive:
            headers = {k: npy_header(path, archive, f"{k}.npy") for k in STAT_SHAPES if k in names}
        wrong = [f"{k} {h[0]}" for k, h in headers.items()
                 if h[0] != STAT_SHAPES[k] and not h[2].hasobject]  # fmt: skip
        if wrong:
            raise SpherearError(
                f"{path}: stored statistics of the wrong shape ({', '.join(wrong)}); an ADM "
                "reference holds mu (2048), sigma (2048 x 2048), mu_s (2023), sigma_s (2023 x 2023)"
            )
        try:
            with np.load(path, allow_pickle=False) as f:
                stats = {k: f[k].astype(np.float64) for k in headers}
        except (ValueError, OSError, zipfile.BadZipFile) as e:  # object arrays: a pickle
            why = " ".join(str(e).split())
            raise SpherearError(f"{path}: stored statistics are unreadable ({why})") from None
    _check_statistics(path, stats)
    if "arr_0" not in names and stats:
        return Reference(path, None, stats)
    images = NpzImages(path)
    if images.resolution != resolution:
        raise SpherearError(
            f"{path}: reference images are {images.shape[1]}x{images.shape[2]} but the samples "
            f"are {resolution[0]}x{resolution[1]}; use a reference at the samples' resolution"
        )
    return Reference(path, images, stats)
