"""``prepare-data``: any source -> one on-disk format, resumable and idempotent.

The output folder holds ``data/shard-XXXXX.parquet`` with Hugging Face ``datasets``
features (``image``, ``label`` as a ClassLabel, ``class_name``, ``key``), so
``datasets.load_dataset("parquet", data_dir=f"{OUT}/data")`` reads it too, plus
``info.json`` (settings, counts, class names) and ``bad_images.txt`` (undecodable inputs,
skipped). Work happens in ``.OUT.partial`` next to
the output, one Parquet file per source shard, each written under a temporary name and
renamed when whole; a rerun skips finished shards, and the folder is renamed to OUT only
when every shard is there. An existing complete OUT with the same settings is reused.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from spherear.data.sources import Shard, SourceError, open_source, split_name

FORMAT_VERSION = 1
INFO = "info.json"
BAD = "bad_images.txt"


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


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB whatever the mode: CMYK, grayscale, palette and alpha images included."""
    if image.mode == "RGB":
        return image
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
        lossless = image.format in ("PNG", "BMP", "TIFF", "GIF", "WEBP")
        original = raw if image.format == "JPEG" and image.mode == "RGB" else None
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


def _shard_path(folder: Path, index: int, suffix: str = ".parquet") -> Path:
    return folder / "data" / f"shard-{index:05d}{suffix}"


def _write_shard(task: tuple) -> tuple[int, int, list[str]]:
    """Worker: one source shard -> ``data/shard-XXXXX.parquet``. Returns (index, kept, bad)."""
    import datasets

    datasets.disable_progress_bars()

    source, shard, partial, short_side = task
    rows = {"image": [], "label": [], "class_name": [], "key": []}
    bad = []
    for key, raw, label in source.read(shard):
        try:
            data, _ = encode_image(raw, short_side)
        except Exception as e:  # a corrupt file must not end a run over a million images
            bad.append(f"{shard.name}/{key}\t{type(e).__name__}: {' '.join(str(e).split())}")
            continue
        rows["image"].append({"bytes": data, "path": key})
        rows["label"].append(label)
        rows["class_name"].append(source.class_names[label])
        rows["key"].append(key)
    final = _shard_path(partial, shard.index)
    tmp = final.with_suffix(".tmp")
    table = datasets.Dataset.from_dict(rows, features=_features(source.class_names))
    table.to_parquet(str(tmp))
    _shard_path(partial, shard.index, ".bad.json").write_text(json.dumps(bad))
    tmp.replace(final)  # the shard exists under its final name only when whole
    return shard.index, len(rows["key"]), bad


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def prepare_dataset(
    source: str,
    out: str | Path,
    resolution: int = 256,
    num_proc: int = 1,
    split: str = "train",
    num_images: int = 10_000,
    seed: int = 0,
    min_crop_fraction: float = 0.8,
    progress: bool = True,
) -> PrepareResult:
    """Prepare ``source`` into ``out``; see the module docstring for the format."""
    out = Path(out)
    start = time.time()
    # random crops cover down to min_crop_fraction of the short side and must still be at
    # least `resolution` pixels, so keep that much (never more: storage stays bounded)
    short_side = int(np.ceil(resolution / min_crop_fraction))
    split = split_name(split)  # "val" is recorded as "validation": the same data
    src = open_source(source, split, num_images, seed, resolution)
    settings = {
        "format_version": FORMAT_VERSION,
        "source": src.description,
        "split": split,
        "short_side": short_side,
        **({"num_images": num_images, "seed": seed} if source == "synthetic" else {}),
    }
    if (out / INFO).is_file():
        info = json.loads((out / INFO).read_text())
        if info["settings"] != settings:
            raise SourceError(
                f"{out} holds a dataset prepared with other settings ({info['settings']}); "
                "choose another --out or delete it"
            )
        return PrepareResult(out, info["num_images"], info["num_bad"], info["bytes"], 0, True)
    if out.exists():
        raise SourceError(f"{out} exists but is not a prepared dataset; choose another --out")
    partial = out.parent / f".{out.name}.partial"
    settings_file = partial / "settings.json"
    if partial.exists() and (
        not settings_file.is_file() or json.loads(settings_file.read_text()) != settings
    ):
        shutil.rmtree(partial)  # our own leftovers from a run with other settings
    (partial / "data").mkdir(parents=True, exist_ok=True)
    settings_file.write_text(json.dumps(settings))

    shards = src.shards()
    todo = [s for s in shards if not _shard_path(partial, s.index).is_file()]
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
        with multiprocessing.get_context("spawn").Pool(num_proc) as pool:
            for _, kept, _ in pool.imap_unordered(_write_shard, tasks):
                advance(kept)
    else:
        for task in tasks:
            advance(_write_shard(task)[1])
    bar.close()
    return _finish(partial, out, settings, src, shards, start)


def _finish(partial: Path, out: Path, settings: dict, src, shards: list[Shard], start: float):
    import pyarrow.parquet as pq

    bad: list[str] = []
    num_images = 0
    for s in shards:
        bad += json.loads(_shard_path(partial, s.index, ".bad.json").read_text())
        num_images += pq.ParquetFile(_shard_path(partial, s.index)).metadata.num_rows
        _shard_path(partial, s.index, ".bad.json").unlink()
    if num_images == 0:
        raise SourceError(f"{src.description}: no image could be decoded; see the source")
    (partial / BAD).write_text("".join(line + "\n" for line in bad))
    (partial / "settings.json").unlink()
    info = {
        "settings": settings,
        "num_images": num_images,
        "num_bad": len(bad),
        "num_classes": len(src.class_names),
        "class_names": src.class_names,
    }
    info["bytes"] = _folder_bytes(partial)
    (partial / INFO).write_text(json.dumps(info, indent=1))
    partial.rename(out)
    return PrepareResult(out, num_images, len(bad), info["bytes"], time.time() - start, False)


def read_info(folder: str | Path) -> dict:
    path = Path(folder) / INFO
    if not path.is_file():
        raise SourceError(
            f"{folder}: not a prepared dataset (no {INFO}); run `spherear prepare-data` first"
        )
    return json.loads(path.read_text())


def shard_files(folder: str | Path) -> list[Path]:
    read_info(folder)
    return sorted((Path(folder) / "data").glob("shard-*.parquet"))


class PreparedImages:
    """Random access to a prepared dataset's images and labels (memory-mapped Arrow)."""

    def __init__(self, folder: str | Path):
        import datasets

        files = [str(f) for f in shard_files(folder)]
        self.info = read_info(folder)
        ds = datasets.load_dataset("parquet", data_files=files, split="train")
        self.ds = ds.cast_column("image", datasets.Image(decode=False))

    def __len__(self) -> int:
        return len(self.ds)

    def labels(self) -> np.ndarray:
        """Every image's label, in storage order."""
        return np.asarray(self.ds["label"], dtype=np.int64)

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        row = self.ds[i]
        return Image.open(io.BytesIO(row["image"]["bytes"])).convert("RGB"), row["label"]
