"""``prepare-data``: any source -> one on-disk format, resumable and idempotent.

The output folder holds ``data/shard-XXXXX.parquet`` with Hugging Face ``datasets``
features (``image``, ``label`` as a ClassLabel, ``class_name``, ``key``), so
``datasets.load_dataset("parquet", data_dir=f"{OUT}/data")`` reads it too, plus
``info.json`` (settings, counts, class names, each shard's size and sha256) and
``bad_images.txt`` (undecodable inputs, skipped; each shard also keeps its own list in its
Parquet metadata). Work happens in ``.OUT.partial`` next to the output, one Parquet file per
source shard, each written under a temporary name and renamed when whole; a rerun skips
finished shards, and the folder is renamed to OUT only when every shard is there. An
existing complete OUT with the same settings is checked against its recorded hashes and
reused; a damaged shard is named and prepared again.

``PreparedImages`` reads the shards in place with PyArrow, a row group at a time, so
training never copies the dataset (no Hugging Face cache).
"""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import re
import shutil
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from tqdm import tqdm

from spherear.data.sources import (
    SYNTHETIC_IMAGES,
    FolderSource,
    Shard,
    Skipped,
    SourceError,
    TarSource,
    open_source,
    split_name,
)
from spherear.files import (
    DamagedError,
    atomic_write,
    check_record,
    differences,
    file_record,
    note,
    publish,
    read_json,
    sweep,
    write_json,
)
from spherear.folder_kinds import PREPARED, check_output_folder
from spherear.folder_lock import hold

FORMAT_VERSION = 1
INFO = "info.json"
BAD = "bad_images.txt"
EXIF_ORIENTATION = 0x0112
BAD_KEY = b"spherear.bad_images"  # each shard's own list of skipped inputs, in its metadata
ROW_GROUP_BYTES = 1 << 20  # random access decodes one row group: keep them about 1 MB


@dataclass
class PrepareResult:
    out: Path
    num_images: int
    num_bad: int
    bytes_on_disk: int
    seconds: float
    reused: bool

    def summary(self) -> str:
        if self.reused:
            return f"{self.out}: already prepared ({self.num_images} images); reusing it"
        bad = f", {self.num_bad} undecodable skipped (listed in {self.out / BAD})"
        return (
            f"prepared {self.num_images} images in {self.out}"
            f"{bad if self.num_bad else ''}; {self.bytes_on_disk / 1e6:.1f} MB on disk; "
            f"{self.num_images / max(self.seconds, 1e-9):.0f} images/s"
        )


def _to_8bit(image: Image.Image) -> Image.Image:
    """A grey image of more than 8 bits (16-bit PNG or TIFF, 32-bit integer or float TIFF)
    scaled to 0..255; PIL's own conversion clips it instead, turning most of it white."""
    values = np.asarray(image, dtype=np.float64)
    top = 65535.0 if image.mode != "F" else (1.0 if values.max(initial=0) <= 1 else 255.0)
    return Image.fromarray(np.clip(np.rint(values * (255 / top)), 0, 255).astype(np.uint8))


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB whatever the mode: CMYK, grayscale (8 or 16 bits), palette and alpha images."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        image = _to_8bit(image)
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


def encode_image(raw: bytes | np.ndarray, short_side: int) -> tuple[bytes, tuple[int, int]]:
    """Decode, convert to RGB, shrink so the short side is at most ``short_side`` (never
    enlarge) and encode. Untouched RGB JPEGs keep their bytes; generated and lossless
    inputs are stored as PNG, other changed images as JPEG quality 95."""
    if isinstance(raw, np.ndarray):
        image, lossless, original = Image.fromarray(raw), True, None
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL warns on odd EXIF; the pixels are fine
            image = Image.open(io.BytesIO(raw))
            image.load()
            # a camera's EXIF orientation: the pixels as the photo is meant to be seen
            turned = image.getexif().get(EXIF_ORIENTATION, 1) != 1
        lossless = image.format in ("PNG", "BMP", "TIFF", "GIF", "WEBP")
        original = raw if image.format == "JPEG" and image.mode == "RGB" and not turned else None
        if turned:
            image = ImageOps.exif_transpose(image)
    rgb = _to_rgb(image)
    scale = short_side / min(rgb.size)
    if scale < 1:
        size = tuple(max(1, round(x * scale)) for x in rgb.size)
        rgb = rgb.resize(size, resample=Image.BICUBIC, reducing_gap=3.0)
        original = None
    if original is not None:
        return original, rgb.size
    buffer = io.BytesIO()
    if lossless:
        rgb.save(buffer, format="PNG")
    else:
        rgb.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue(), rgb.size


def _features(class_names: list[str]):
    import datasets

    return datasets.Features(
        {
            "image": datasets.Image(),
            "label": datasets.ClassLabel(names=class_names),
            "class_name": datasets.Value("string"),
            "key": datasets.Value("string"),
        }
    )


def _shard_path(folder: Path, index: int) -> Path:
    return folder / "data" / f"shard-{index:05d}.parquet"


def _write_shard(task: tuple) -> tuple[int, int, list[str]]:
    """Worker: one source shard -> ``data/shard-XXXXX.parquet``. Returns (index, kept, bad)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    source, shard, partial, short_side = task
    rows = {"image": [], "label": [], "class_name": [], "key": []}
    bad = []
    for key, raw, label in source.read(shard):
        if isinstance(raw, Skipped):
            bad.append(f"{shard.name}/{key}\tskipped: {raw}")
            continue
        try:
            data, _ = encode_image(raw, short_side)
        except Exception as e:  # a corrupt file must not end a run over a million images
            # no object addresses: the list is part of the shard, whose bytes must not vary
            why = re.sub(r" at 0x[0-9a-f]+", "", " ".join(str(e).split()))
            bad.append(f"{shard.name}/{key}\t{type(e).__name__}: {why}")
            continue
        rows["image"].append({"bytes": data, "path": key})
        rows["label"].append(label)
        rows["class_name"].append(source.class_names[label])
        rows["key"].append(key)
    schema = _features(source.class_names).arrow_schema
    schema = schema.with_metadata({**schema.metadata, BAD_KEY: json.dumps(bad).encode()})
    table = pa.Table.from_pydict(rows, schema=schema)
    image_bytes = sum(len(image["bytes"]) for image in rows["image"])
    per_group = max(1, ROW_GROUP_BYTES * len(rows["key"]) // max(1, image_bytes))
    atomic_write(_shard_path(partial, shard.index),
                 lambda tmp: pq.write_table(table, str(tmp), row_group_size=per_group),
                 "prepare/shard")  # fmt: skip
    return shard.index, len(rows["key"]), bad


def _shard_readable(path: Path) -> bool:
    import pyarrow.parquet as pq

    try:
        pq.read_metadata(path)
    except Exception:  # pyarrow raises ArrowInvalid or OSError for a damaged footer
        return False
    return True


def _source_setting(src, out: Path) -> tuple[str, str]:
    """The source as recorded in the settings, and as an absolute description: a folder or
    tar source by its path relative to the output's folder, so a workspace moved (or
    copied) with its data still matches."""
    location = getattr(src, "location", None)
    if location is None:
        return src.description, src.description
    kind = src.description.partition(":")[0]
    return f"{kind}:{os.path.relpath(location.resolve(), out.resolve().parent)}", src.description


def _differences(info: dict, settings: dict, absolute: str) -> str:
    """What differs from the settings ``info`` recorded ("" if nothing): the source matches
    by its path relative to the output or by its absolute description."""
    saved = info.get("settings")
    if not isinstance(saved, dict):
        return "none recorded"
    source = saved.get("source")
    if source in (settings["source"], absolute) or info.get("source_path") == absolute:
        settings = {**settings, "source": source}
    return differences(saved, settings)


def prepare_dataset(
    source: str,
    out: str | Path,
    resolution: int = 256,
    num_proc: int = 1,
    split: str = "train",
    num_images: int | None = None,
    seed: int = 0,
    min_crop_fraction: float = 0.8,
    progress: bool = True,
    say: Callable[[str], None] = note,
) -> PrepareResult:
    """Prepare ``source`` into ``out``, one command at a time; see the module docstring for
    the format. ``num_images`` and ``seed`` are for the synthetic source only (default
    10,000 images)."""
    kind, _, rest = source.partition(":")
    local = Path(rest).expanduser() if kind in ("folder", "tar") and rest else None
    check_output_folder(out, PREPARED, "--out", [local])
    if Path(out).exists() and not (Path(out) / INFO).is_file():
        raise SourceError(f"{out} exists but is not a prepared dataset; choose another --out")
    with hold(out, "prepare-data"):
        return _prepare(source, Path(out), resolution, num_proc, split, num_images, seed,
                        min_crop_fraction, progress, say)  # fmt: skip


def _prepare(source: str, out: Path, resolution: int, num_proc: int, split: str,
             num_images: int | None, seed: int, min_crop_fraction: float, progress: bool,
             say: Callable[[str], None]) -> PrepareResult:  # fmt: skip
    start = time.time()
    synthetic = source.partition(":")[0] == "synthetic"
    if num_images is not None and not synthetic:
        say(f"--num-images / data.num_images is for the synthetic source only; {source} gives "
            f"every image of its {split} split")  # fmt: skip
    num_images = SYNTHETIC_IMAGES if num_images is None else num_images
    for name, value, low in [("--resolution", resolution, 1), ("--num-proc", num_proc, 1),
                             ("--num-images", num_images, 1), ("--seed", seed, 0)]:  # fmt: skip
        if value < low:
            raise SourceError(f"{name} {value}: must be at least {low}")
    # random crops cover down to min_crop_fraction of the short side and must still be at
    # least `resolution` pixels, so keep that much (never more: storage stays bounded)
    short_side = int(np.ceil(resolution / min_crop_fraction))
    split = split_name(split)  # "val" is recorded as "validation": the same data
    src = open_source(source, split, num_images, seed, resolution)
    settings = {
        "format_version": FORMAT_VERSION,
        "source": "",
        "split": split,
        "short_side": short_side,
        **({"num_images": num_images, "seed": seed} if synthetic else {}),
    }
    settings["source"], absolute = _source_setting(src, out)
    partial = out.parent / f".{out.name}.partial"
    if (out / INFO).is_file():
        info = read_info(out)
        differ = _differences(info, settings, absolute)
        if differ:
            raise SourceError(
                f"{out} holds a dataset prepared with other settings ({differ}); choose "
                "another --out or delete it"
            )
        damaged = _damaged_shards(out, info)
        if not damaged:
            return PrepareResult(out, info["num_images"], info["num_bad"], info["bytes"], 0, True)
        for path, problem in damaged:
            say(f"{path}: damaged ({problem}); preparing that shard again")
        shutil.rmtree(partial, ignore_errors=True)
        out.rename(partial)  # back to unfinished: only the damaged shards are redone
        for path, _ in damaged:
            (partial / path.relative_to(out)).unlink(missing_ok=True)
    if partial.exists() and _differences(_partial_info(partial), settings, absolute):
        shutil.rmtree(partial)  # our own leftovers from a run with other settings
    if not (partial / INFO).is_file():
        write_json(partial / INFO, {"settings": settings, "source_path": absolute},
                   "prepare/start")  # fmt: skip
    (partial / "data").mkdir(parents=True, exist_ok=True)
    sweep(partial)
    sweep(out.parent, recursive=False)  # a publish killed between its two renames

    shards = src.shards()
    todo = [s for s in shards if not _shard_readable(_shard_path(partial, s.index))]
    tasks = [(src, s, partial, short_side) for s in todo]
    bar = tqdm(total=len(shards), initial=len(shards) - len(todo), unit="shard",
               disable=not progress, desc="prepare-data")  # fmt: skip
    done_images = 0
    run_start = time.time()

    def advance(kept: int) -> None:
        nonlocal done_images
        done_images += kept
        bar.set_postfix(images_per_s=f"{done_images / max(time.time() - run_start, 1e-9):.0f}")
        bar.update(1)

    if num_proc > 1 and len(tasks) > 1:
        # spawn: workers must not inherit torch's threads or open file handles
        pool = multiprocessing.get_context("spawn").Pool(num_proc)
        try:
            for _, kept, _ in pool.imap_unordered(_write_shard, tasks):
                advance(kept)
            pool.close()  # not terminate(): a killed worker leaks its semaphores
        except BaseException:
            pool.terminate()
            raise
        finally:
            pool.join()
    else:
        for task in tasks:
            advance(_write_shard(task)[1])
    bar.close()
    return _finish(partial, out, settings, absolute, src, shards, start)


def _partial_info(partial: Path) -> dict:
    try:
        return read_json(partial / INFO, "")
    except DamagedError:
        return {}


def _damaged_shards(out: Path, info: dict) -> list[tuple[Path, str]]:
    """The shards of a finished dataset that differ from the sizes and hashes recorded when
    it was written (all of them are read)."""
    if "files" not in info:  # written before records existed: the footers must still read
        return [(f, "unreadable Parquet footer") for f in sorted((out / "data").glob("*.parquet"))
                if not _shard_readable(f)]  # fmt: skip
    found = []
    for name, record in info["files"].items():
        problem = check_record(out / name, record)
        if problem:
            found.append((out / name, problem))
    return found


def _finish(partial: Path, out: Path, settings: dict, absolute: str, src, shards: list[Shard],
            start: float) -> PrepareResult:  # fmt: skip
    import pyarrow.parquet as pq

    bad: list[str] = []
    num_images = 0
    records = {}
    empty: list[tuple[str, list[str]]] = []
    for s in shards:
        path = _shard_path(partial, s.index)
        metadata = pq.read_metadata(path)
        skipped = json.loads(metadata.metadata[BAD_KEY])
        if metadata.num_rows == 0 and isinstance(src, FolderSource | TarSource):
            empty.append((s.name, skipped))
            path.unlink()  # not kept as done: the rerun after a fix of the source reads it again
            continue
        bad += skipped
        num_images += metadata.num_rows
        records[path.relative_to(partial).as_posix()] = file_record(path)
    if empty:
        name, skipped = empty[0]
        why = f"; the first skipped: {skipped[0]}" if skipped else ""
        more = f" and {len(empty) - 1} more" if len(empty) > 1 else ""
        raise SourceError(
            f"{src.description}: class {name}{more} has no readable image ({len(skipped)} "
            f"skipped{why}); add images to it or remove it"
        )
    if num_images == 0:
        raise SourceError(f"{src.description}: no image could be decoded; see the source")
    atomic_write(partial / BAD, "".join(line + "\n" for line in bad), "prepare/bad_images")
    info = {
        "settings": settings,
        "source_path": absolute,
        "num_images": num_images,
        "num_bad": len(bad),
        "num_classes": len(src.class_names),
        "class_names": src.class_names,
        "bytes": sum(r["bytes"] for r in records.values()) + (partial / BAD).stat().st_size,
        "files": records,
    }
    write_json(partial / INFO, info, "prepare/info")
    publish(partial, out, "prepare/publish")
    return PrepareResult(out, num_images, len(bad), info["bytes"], time.time() - start, False)


def read_info(folder: str | Path) -> dict:
    path = Path(folder) / INFO
    if not path.is_file():
        raise SourceError(
            f"{folder}: not a prepared dataset (no {INFO}); run `spherear prepare-data` first"
        )
    info = read_json(path, "rerun `spherear prepare-data` into a new folder")
    if not isinstance(info, dict) or "num_images" not in info:
        raise DamagedError(f"{path}: not the info of a prepared dataset; rerun prepare-data")
    return info


def shard_files(folder: str | Path) -> list[Path]:
    """The dataset's shards, each checked to have the size recorded when it was written."""
    folder = Path(folder)
    info = read_info(folder)
    for name, record in info.get("files", {}).items():
        problem = check_record(folder / name, record, content=False)
        if problem:
            raise DamagedError(
                f"{folder / name}: damaged ({problem}); rerun `spherear prepare-data` with the "
                "same arguments, which prepares the damaged shards again"
            )
    return sorted((folder / "data").glob("shard-*.parquet"))


def data_fingerprint(folder: str | Path) -> str:
    """What identifies a prepared dataset's content wherever it lies: its shards' hashes
    (their names and sizes for datasets prepared before hashes were recorded)."""
    import hashlib

    info = read_info(folder)
    files = info.get("files") or {f.name: f.stat().st_size for f in shard_files(folder)}
    content = {"settings": {**info["settings"], "source": None}, "files": files}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


class PreparedImages:
    """Random access to a prepared dataset's images and labels, read in place: the shards are
    memory-mapped and decoded one row group at a time (the last ``CACHED_GROUPS`` kept), so
    nothing is copied to a cache."""

    CACHED_GROUPS = 64

    def __init__(self, folder: str | Path):
        import pyarrow.parquet as pq

        self.folder = Path(folder)
        self.files = shard_files(folder)
        self.info = read_info(folder)
        self._groups: list[tuple[int, int]] = []
        starts = [0]
        for i, path in enumerate(self.files):
            try:
                metadata = pq.read_metadata(path)
            except Exception as e:  # ArrowInvalid or OSError: a damaged footer
                raise DamagedError(
                    f"{path}: damaged, not a readable Parquet file ({' '.join(str(e).split())}); "
                    "rerun `spherear prepare-data` with the same arguments"
                ) from None
            for g in range(metadata.num_row_groups):
                self._groups.append((i, g))
                starts.append(starts[-1] + metadata.row_group(g).num_rows)
        self._starts = np.array(starts)
        self._handles: dict[tuple[int, int], object] = {}
        self._cache: OrderedDict[int, tuple] = OrderedDict()

    def __len__(self) -> int:
        return int(self._starts[-1])

    def _file(self, i: int):
        import pyarrow.parquet as pq

        key = (os.getpid(), i)  # DataLoader workers fork: each opens its own handles
        if key not in self._handles:
            self._handles[key] = pq.ParquetFile(self.files[i], memory_map=True)
        return self._handles[key]

    def _group(self, k: int) -> tuple:
        if k in self._cache:
            self._cache.move_to_end(k)
            return self._cache[k]
        i, g = self._groups[k]
        table = self._file(i).read_row_group(g, columns=["image", "label"])
        images = table.column("image").combine_chunks().field("bytes")
        self._cache[k] = (images, table.column("label").to_numpy())
        if len(self._cache) > self.CACHED_GROUPS:
            self._cache.popitem(last=False)
        return self._cache[k]

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        if not 0 <= i < len(self):
            raise IndexError(f"image {i} of {len(self)}")
        k = int(np.searchsorted(self._starts, i, side="right")) - 1
        images, labels = self._group(k)
        j = i - int(self._starts[k])
        return Image.open(io.BytesIO(images[j].as_py())).convert("RGB"), int(labels[j])

    def labels(self) -> np.ndarray:
        """Every image's label, in order (int64)."""
        import pyarrow.parquet as pq

        return np.concatenate(
            [pq.read_table(f, columns=["label"]).column("label").to_numpy() for f in self.files]
        ).astype(np.int64)
