"""Where images come from: ``hf:<id>[@rev]``, ``folder:<path>``, ``tar:<path>``, ``synthetic``.

Every source lists its *shards*, units of work a worker process can read on its own, and
reads a shard as (key, raw image, label) triples. A folder or tar source labels its own
classes 0..K-1 in sorted order of their names, whatever the names are; for the 1000
ImageNet wnids that is the standard ImageNet order (as the hub dataset numbers them), so a
model means the same thing whichever source trained it.
"""

from __future__ import annotations

import functools
import io
import os
import re
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from spherear.data.synthetic import FAMILIES, render
from spherear.errors import SpherearError

IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
WNID = re.compile(r"^n\d{8}$")
# larger than any photograph; a bigger file (or /dev/zero behind a link) is skipped unread
MAX_IMAGE_BYTES = 256 << 20
SHARD_SIZE = 1000  # images per shard where a source has no natural unit (hub, synthetic)
SYNTHETIC_IMAGES = 10_000  # how many images the synthetic source makes unless told
# the folder names each split is read from in a folder: source; "val" also names the split
SPLIT_FOLDERS = {"train": ("train",), "validation": ("val", "validation")}


class SourceError(SpherearError):
    """A source that cannot be read; the message names the fix."""


def imagenet_classes() -> tuple[list[str], list[str]]:
    """The 1000 ImageNet-1k wnids in label order and a short name for each (from timm)."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    wnids = list(info.label_names())
    names = [d.split(",")[0].strip() for d in info.label_descriptions()]
    # two short names repeat ("crane", "maillot"); class labels must be unique
    repeated = {n for n in names if names.count(n) > 1}
    names = [f"{n} ({w})" if n in repeated else n for n, w in zip(names, wnids, strict=True)]
    return wnids, names


def _class_labels(folders: list[str]) -> tuple[dict[str, int], list[str]]:
    """Label of each class folder (0..K-1 over the sorted names) and the class names:
    ImageNet's short names when every folder is an ImageNet wnid, else the folder names.
    A subset of ImageNet's classes is thus labelled 0..K-1 too, not by ImageNet index:
    a model's class embedding has exactly the data's classes."""
    ordered = sorted(folders)
    labels = {name: i for i, name in enumerate(ordered)}
    if all(WNID.match(name) for name in ordered):
        short = dict(zip(*imagenet_classes(), strict=True))
        if all(name in short for name in ordered):
            return labels, [short[name] for name in ordered]
    return labels, ordered


@dataclass
class Shard:
    index: int
    name: str  # what a person would recognise: a class folder, an inner tar, a range
    items: list = field(default_factory=list)


class Skipped(Exception):
    """An entry of a source that is not read as an image; its message is the reason,
    listed in the prepared dataset's bad_images.txt."""


# encoded file bytes, pixels for generated images, or why an entry was skipped
Raw = bytes | np.ndarray | Skipped


def _utf8(name: str) -> str | None:
    """``name`` if it is valid UTF-8 (the Parquet files store names as UTF-8), else None."""
    try:
        name.encode()
    except UnicodeEncodeError:
        return None
    return name


def read_regular_file(path: Path) -> bytes | Skipped:
    """The bytes of ``path`` if it is a regular file (after links) of at most
    MAX_IMAGE_BYTES; else why not. Opened without blocking, so a FIFO cannot hang it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        return Skipped(f"cannot be opened ({e.strerror})")
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return Skipped("not a regular file (a device, FIFO or socket, or a link to one)")
        if info.st_size > MAX_IMAGE_BYTES:
            return Skipped(f"{info.st_size} bytes, more than the {MAX_IMAGE_BYTES >> 20} MiB "
                           "an image may have")  # fmt: skip
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(MAX_IMAGE_BYTES + 1)
        if len(data) > MAX_IMAGE_BYTES:
            return Skipped(f"grew past {MAX_IMAGE_BYTES >> 20} MiB while it was read")
        return data
    except OSError as e:
        return Skipped(f"cannot be read ({e.strerror})")
    finally:
        os.close(fd)


@dataclass
class FolderSource:
    """``<root>/train/<class>/*`` and ``<root>/val/<class>/*`` (or ``validation/``), or
    ``<root>/<class>/*`` (an ImageFolder: training images only). Any class names; the
    training split's sorted class folders give the labels of both splits."""

    root: Path
    split: str

    def __post_init__(self):
        if not self.root.is_dir():
            raise SourceError(f"folder:{self.root}: no such folder; pass the dataset's root")
        split_dirs = [self.root / n for n in SPLIT_FOLDERS[self.split] if (self.root / n).is_dir()]
        has_splits = any((self.root / n).is_dir() for names in SPLIT_FOLDERS.values()
                         for n in names)  # fmt: skip
        if split_dirs:
            self.base = split_dirs[0]
        elif self.split == "train" and not has_splits:
            self.base = self.root
        else:
            wanted = " or ".join(f"{n}/" for n in SPLIT_FOLDERS[self.split])
            raise SourceError(f"folder:{self.root}: no {wanted} folder for --split {self.split}")
        folders = _class_folders(self.base)
        odd = next((name for name in folders if _utf8(name) is None), None)
        if odd is not None:
            raise SourceError(
                f"folder:{self.root}: class folder {ascii(odd)} has a name that is not UTF-8; "
                "rename it (class names are stored as UTF-8 text)"
            )
        if not folders:
            raise SourceError(
                f"folder:{self.root}: no class folders in {self.base}; expected "
                f"{self.base}/<class name>/<image files>"
            )
        for name in folders:
            if not any(_is_image(p.name) for p in (self.base / name).iterdir()):
                raise SourceError(
                    f"folder:{self.root}: class folder {self.base / name} has no images; "
                    "remove it or add its images"
                )
        train = self.root / "train"
        classes = _class_folders(train) if self.base != train and train.is_dir() else folders
        extra = sorted(set(folders) - set(classes))
        if extra:
            raise SourceError(
                f"folder:{self.root}: class folder {self.base / extra[0]} has no counterpart in "
                f"{train}; the training classes define the labels, so add or rename it"
            )
        self.labels, self.class_names = _class_labels(classes)
        self.folders = folders

    @property
    def location(self) -> Path:
        return self.root

    @property
    def description(self) -> str:
        return f"folder:{self.root.resolve()}"

    def shards(self) -> list[Shard]:
        return [Shard(i, name, [name]) for i, name in enumerate(self.folders)]

    def read(self, shard: Shard) -> Iterator[tuple[str, Raw, int]]:
        folder = self.base / shard.items[0]
        label = self.labels[shard.items[0]]
        for path in sorted(p for p in folder.iterdir() if _is_image(p.name)):
            if _utf8(path.name) is None:
                yield ascii(path.name), Skipped("its name is not UTF-8; rename it"), label
            else:
                yield path.name, read_regular_file(path), label


@dataclass
class TarSource:
    """The original ``ILSVRC2012_img_train.tar``: one ``<wnid>.tar`` per class, read in
    place without extracting."""

    path: Path
    split: str

    def __post_init__(self):
        if self.split != "train":
            raise SourceError(
                f"tar:{self.path}: only the train tar of per-class tars is supported; for "
                "the validation split use hf:ILSVRC/imagenet-1k or a folder: source"
            )
        if not self.path.is_file():
            raise SourceError(f"tar:{self.path}: no such file; pass ILSVRC2012_img_train.tar")
        try:
            with tarfile.open(self.path) as outer:
                members = [m.name for m in outer.getmembers() if m.isfile()]
        except tarfile.TarError as e:
            why = " ".join(str(e).split())
            raise SourceError(f"tar:{self.path}: not a readable tar file ({why})") from None
        inner = sorted(m for m in members if m.endswith(".tar"))
        if not inner or len(inner) != len(members):
            raise SourceError(
                f"tar:{self.path}: not in the ImageNet layout (a tar of <wnid>.tar files, one "
                "per class); for extracted images use folder:<path>"
            )
        self.members = inner
        wnids = [Path(m).stem for m in inner]
        twice = next((m for m in inner if wnids.count(Path(m).stem) > 1), None)
        if twice is not None:
            others = [m for m in inner if Path(m).stem == Path(twice).stem]
            raise SourceError(
                f"tar:{self.path}: {' and '.join(others)} are both class "
                f"'{Path(twice).stem}'; keep one tar per class"
            )
        self.labels, self.class_names = _class_labels(wnids)

    @property
    def location(self) -> Path:
        return self.path

    @property
    def description(self) -> str:
        return f"tar:{self.path.resolve()}"

    def shards(self) -> list[Shard]:
        return [Shard(i, m, [m]) for i, m in enumerate(self.members)]

    def read(self, shard: Shard) -> Iterator[tuple[str, Raw, int]]:
        member = shard.items[0]
        label = self.labels[Path(member).stem]
        with tarfile.open(self.path) as outer:
            data = outer.extractfile(member).read()
        try:
            with tarfile.open(fileobj=io.BytesIO(data)) as inner:
                entries = sorted(inner.getmembers(), key=lambda m: m.name)
                for m in (m for m in entries if _is_image(m.name)):
                    yield Path(m.name).name, _read_member(inner, m), label
        except (tarfile.TarError, EOFError, OSError) as e:
            why = " ".join(str(e).split()) or type(e).__name__
            yield "(the whole tar)", Skipped(f"not a readable tar ({why})"), label


def _read_member(archive: tarfile.TarFile, member: tarfile.TarInfo) -> bytes | Skipped:
    if not member.isfile():
        return Skipped("not a regular file in the tar (a link, device or folder)")
    if member.size > MAX_IMAGE_BYTES:
        return Skipped(f"{member.size} bytes, more than the {MAX_IMAGE_BYTES >> 20} MiB an image "
                       "may have")  # fmt: skip
    try:
        return archive.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError) as e:
        return Skipped(f"damaged ({' '.join(str(e).split()) or type(e).__name__})")


@dataclass
class SyntheticSource:
    """The embedded generated set (``spherear.data.synthetic``); nothing is read from disk."""

    num_images: int
    seed: int
    split: str
    resolution: int
    family: str = "shapes"

    def __post_init__(self):
        if self.num_images <= 0:
            raise SourceError("synthetic: --num-images must be positive")
        # another stream for validation, so the two splits never share an image
        self.stream = self.seed * 2 + (self.split == "validation")
        self.class_names = list(FAMILIES[self.family])

    @property
    def description(self) -> str:
        family = "" if self.family == "shapes" else f"{self.family}, "
        return f"synthetic({family}seed={self.seed}, split={self.split})"

    def shards(self) -> list[Shard]:
        starts = range(0, self.num_images, SHARD_SIZE)
        return [
            Shard(i, f"images {s}..{min(s + SHARD_SIZE, self.num_images) - 1}",
                  [s, min(s + SHARD_SIZE, self.num_images)])
            for i, s in enumerate(starts)
        ]  # fmt: skip

    def read(self, shard: Shard) -> Iterator[tuple[str, Raw, int]]:
        for i in range(*shard.items):
            pixels, label = render(self.stream, i, self.resolution, self.family)
            yield f"{i:08d}", pixels, label


@dataclass
class HubSource:
    """A dataset on the Hugging Face hub with ``image`` and ``label`` columns."""

    repo_id: str
    revision: str | None
    split: str

    def __post_init__(self):
        ds = self._open()
        if "image" not in ds.features or "label" not in ds.features:
            raise SourceError(
                f"hf:{self.repo_id}: needs 'image' and 'label' columns, has "
                f"{', '.join(ds.features)}"
            )
        self.class_names = list(getattr(ds.features["label"], "names", None) or [])
        self.num_rows = len(ds)

    def _open(self):
        return _load_hub_dataset(self.repo_id, self.split, self.revision)

    @property
    def description(self) -> str:
        rev = f"@{self.revision}" if self.revision else ""
        return f"hf:{self.repo_id}{rev}"

    def shards(self) -> list[Shard]:
        starts = range(0, self.num_rows, SHARD_SIZE)
        return [
            Shard(i, f"rows {s}..", [s, min(s + SHARD_SIZE, self.num_rows)])
            for i, s in enumerate(starts)
        ]

    def read(self, shard: Shard) -> Iterator[tuple[str, Raw, int]]:
        ds = self._open()
        for i in range(*shard.items):
            row = ds[i]
            image = row["image"]
            key = os.path.basename(image.get("path") or "") or f"{i:08d}"
            yield key, image["bytes"], int(row["label"])


@functools.lru_cache(maxsize=2)  # once per worker process, not once per shard
def _load_hub_dataset(repo_id: str, split: str, revision: str | None):
    import datasets

    try:
        ds = datasets.load_dataset(repo_id, split=split, revision=revision)
    except Exception as e:  # the hub client raises many types; all mean "not reachable"
        raise SourceError(_hub_hint(repo_id, e)) from None
    return ds.cast_column("image", datasets.Image(decode=False))


def _hub_hint(repo_id: str, error: Exception) -> str:
    text = " ".join(str(error).split())
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return (
            f"hf:{repo_id}: not in the Hugging Face cache and HF_HUB_OFFLINE=1; download it "
            f"once online (`huggingface-cli login`, accept the dataset's terms on its hub page, "
            f"then rerun without HF_HUB_OFFLINE) or use folder:/tar: sources"
        )
    if "gated" in text.lower() or "401" in text or "403" in text:
        return (
            f"hf:{repo_id}: access denied; it is gated: accept its terms on the hub page and "
            "log in with `huggingface-cli login` or set HF_TOKEN"
        )
    return f"hf:{repo_id}: could not load it ({text[:200]})"


def _class_folders(folder: Path) -> list[str]:
    """The class folders: hidden ones (.git, .ipynb_checkpoints, .Trash) are not classes."""
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _is_image(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_SUFFIXES


def split_name(split: str) -> str:
    """``train`` or ``validation`` (also written ``val``, as the folder is named)."""
    if split == "val":
        return "validation"
    if split not in SPLIT_FOLDERS:
        raise SourceError(f"--split {split}: use 'train' or 'validation' (or its alias 'val')")
    return split


def open_source(
    source: str, split: str = "train", num_images: int = SYNTHETIC_IMAGES, seed: int = 0,
    resolution: int = 32,
):  # fmt: skip
    """Parse a ``--source`` string into a source object."""
    split = split_name(split)
    kind, _, rest = source.partition(":")
    if kind == "synthetic" and (not rest or rest in FAMILIES):
        return SyntheticSource(num_images, seed, split, resolution, rest or "shapes")
    if kind == "folder" and rest:
        return FolderSource(Path(rest).expanduser(), split)
    if kind == "tar" and rest:
        return TarSource(Path(rest).expanduser(), split)
    if kind == "hf" and rest:
        repo_id, _, revision = rest.partition("@")
        return HubSource(repo_id, revision or None, split)
    raise SourceError(
        f"--source {source}: unknown source; use hf:<dataset id>[@revision], folder:<path>, "
        f"tar:<ILSVRC2012_img_train.tar> or synthetic[:{'|'.join(FAMILIES)}]"
    )
