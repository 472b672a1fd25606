"""sample: class-conditional sampling to an ADM-format ``.npz``, sharded and resumable.

Image i depends only on (seed, i) and the settings: its label (``random``) and every noise
draw of its tokens come from streams seeded by (seed, i), so neither the number of processes
nor an interruption changes it. The images are made in chunks of ``batch_size`` consecutive
indices (the batch shape can change the rounding of the matmuls, so it is a setting too),
dealt round-robin to the processes. The output folder holds::

    settings.json   what is sampled; written first, a rerun must match it
    chunks/         the finished chunks while the run is unfinished
    labels.npy      int64 (N,)
    grid.png        one row per class, up to 16 classes x 8 images, named on the left
    samples.npz     arr_0: N x H x W x 3 uint8; written last, so it marks a complete run

Every file is written under a temporary name and renamed when whole.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from spherear.checkpoints import Loaded
from spherear.sample_plan import Plan, SampleError, class_labels, only_a_vae

SETTINGS = "settings.json"
# bump when the streams, the chunking, the arithmetic or the quantisation change, so old
# chunks never mix in (2: time embeddings and condition projections computed once, RoPE)
SCHEME = 2
NOISE_STREAM = 1
GRID_CLASSES, GRID_PER_CLASS = 16, 8


@dataclass
class Result:
    out: Path
    n: int
    chunks_per_process: list[int]  # chunks sampled by this invocation, by process
    reused: int  # chunks found finished from an earlier, interrupted invocation
    seconds: float

    def summary(self) -> str:
        if not any(self.chunks_per_process) and not self.reused:
            return f"{self.out / 'samples.npz'} was already complete ({self.n} images)"
        return (
            f"{self.n} images in {self.out / 'samples.npz'} ({self.seconds:.1f} s; chunks "
            f"sampled per process: {self.chunks_per_process}; {self.reused} reused)"
        )


# ---------------------------------------------------------------------------------------
# Noise: a function of (seed, i) alone


def _stream_seed(seed: int, index: int, stream: int) -> int:
    # SeedSequence mixes the triple, so neighbouring (seed, i) give unrelated streams
    return int(np.random.SeedSequence([seed, index, stream]).generate_state(1, np.uint64)[0])


def noise_generators(seed: int, indices: range, device: torch.device) -> list[torch.Generator]:
    """One generator per image: all the noise of image i comes from the stream of (seed, i)."""
    return [
        torch.Generator(device).manual_seed(_stream_seed(seed, i, NOISE_STREAM)) for i in indices
    ]


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in about [-1, 1] -> (B, H, W, 3) uint8, the authors' clamp(127.5 x + 128)
    truncated (not rounded) to integers."""
    scaled = (127.5 * images.float() + 128).clamp(0, 255).permute(0, 2, 3, 1)
    return scaled.to("cpu", torch.uint8).numpy()


# ---------------------------------------------------------------------------------------
# Settings


def _weights_sha256(*models: torch.nn.Module) -> str:
    """The identity of the weights actually used, whatever file or address they came from."""
    digest = hashlib.sha256()
    for model in models:
        for key, tensor in sorted(model.state_dict().items()):
            digest.update(key.encode())
            digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def settings_record(loaded: Loaded, plan: Plan, device: torch.device) -> dict:
    precision = "bf16 autocast" if device.type == "cuda" else "fp32"
    record = {
        **asdict(plan),
        "checkpoint": loaded.description,
        "weights_sha256": _weights_sha256(loaded.vae, loaded.ar),
        "device": f"{device.type}, {precision}",
        "scheme": SCHEME,
        "class_names": list(loaded.recipe.ar.class_names),  # the data's, recorded by train-ar
    }
    return json.loads(json.dumps(record))  # as it reads back from settings.json


# where the weights were read from may move and classes be renamed; the weights' hash is
# what must match
DESCRIPTIVE = {"checkpoint", "class_names"}


def _show(key: str, value) -> str:
    return f"{value[:12]}..." if key.endswith("sha256") and isinstance(value, str) else repr(value)


def check_settings(out: Path, record: dict) -> None:
    path = out / SETTINGS
    if not path.is_file():
        return
    saved = json.loads(path.read_text())
    keys = [k for k in {**saved, **record} if k not in DESCRIPTIVE]
    differ = [k for k in keys if saved.get(k) != record.get(k)]
    if differ:
        listed = "; ".join(
            f"{k} {_show(k, saved.get(k))} there, {_show(k, record.get(k))} now" for k in differ
        )
        raise SampleError(
            f"{out} holds samples made with other settings ({listed}); pass another --out, "
            "or the same arguments to continue it"
        )


def _write_json(path: Path, value: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, indent=2) + "\n")
    tmp.replace(path)


# ---------------------------------------------------------------------------------------
# Chunks


def _chunk_path(out: Path, k: int) -> Path:
    return out / "chunks" / f"chunk-{k:06d}.npz"


def _chunk_range(plan: Plan, k: int) -> range:
    return range(k * plan.batch_size, min(plan.n, (k + 1) * plan.batch_size))


def sample_chunk(
    loaded: Loaded, plan: Plan, labels: np.ndarray, indices: range, accelerator
) -> np.ndarray:
    """Images ``indices`` as (B, H, W, 3) uint8."""
    device = accelerator.device
    y = torch.as_tensor(labels[indices.start : indices.stop], device=device)
    generators = noise_generators(plan.seed, indices, device)
    with torch.inference_mode(), accelerator.autocast():
        tokens = loaded.ar.sample(y, plan.sampling, generators)
        images = loaded.vae.decode(tokens)
    return to_uint8(images)


def _write_chunk(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp")  # a killed run leaves it; the next overwrites it
    with open(tmp, "wb") as f:
        np.savez(f, images=images, labels=labels)
    tmp.replace(path)


def _read_chunk(path: Path, labels: np.ndarray, image_shape: tuple[int, ...]) -> np.ndarray:
    """A chunk's images, if it holds ``labels`` and images of ``image_shape``."""
    with np.load(path) as chunk:
        images, found = chunk["images"], chunk["labels"]
    if not np.array_equal(found, labels) or images.shape[1:] != image_shape:
        raise SampleError(f"{path}: not a chunk of this run; delete {path.parent}/ and rerun")
    return images


# ---------------------------------------------------------------------------------------
# The outputs


def _write_npz(tmp: Path, chunks, shape: tuple[int, ...]) -> None:
    """An ``np.savez``-compatible file with ``arr_0``, streamed chunk by chunk so that 50,000
    images never sit in memory at once; a fixed zip timestamp makes equal arrays equal files."""
    entry = zipfile.ZipInfo("arr_0.npy", date_time=(1980, 1, 1, 0, 0, 0))
    entry.external_attr = 0o600 << 16
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)),
              "fortran_order": False, "shape": shape}  # fmt: skip
    with zipfile.ZipFile(tmp, "w") as zf, zf.open(entry, "w", force_zip64=True) as f:
        np.lib.format.write_array_header_1_0(f, header)
        for images in chunks:
            f.write(np.ascontiguousarray(images).tobytes())


def _grid_indices(labels: np.ndarray) -> dict[int, list[int]]:
    """Up to GRID_PER_CLASS image indices for each of the first GRID_CLASSES classes."""
    return {int(c): np.flatnonzero(labels == c)[:GRID_PER_CLASS].tolist()
            for c in np.unique(labels)[:GRID_CLASSES]}  # fmt: skip


def _write_grid(path: Path, rows: dict[int, list[int]], picked: dict[int, np.ndarray],
                names: list[str]) -> None:  # fmt: skip
    """One row per class of ``rows``, named by ``names`` (by number if there are none)."""
    from spherear.train.session import save_grid

    blank = np.full_like(next(iter(picked.values())), 128)  # short rows stay aligned
    cells = []
    for row in rows.values():
        cells += [picked[i] for i in row] + [blank] * (GRID_PER_CLASS - len(row))
    images = torch.from_numpy(np.stack(cells)).permute(0, 3, 1, 2).float() / 127.5 - 1
    labels = [names[c] if names else f"class {c}" for c in rows]
    save_grid(images, path, nrow=GRID_PER_CLASS, row_labels=labels)


def _assemble(out: Path, plan: Plan, labels: np.ndarray, resolution: int,
              names: list[str]) -> None:  # fmt: skip
    tmp = out / ".labels.npy.tmp"
    with open(tmp, "wb") as f:
        np.save(f, labels)
    tmp.replace(out / "labels.npy")

    rows = _grid_indices(labels)
    wanted = {i for row in rows.values() for i in row}
    picked: dict[int, np.ndarray] = {}
    shape = (plan.n, resolution, resolution, 3)

    def chunks():
        for k in range(math.ceil(plan.n / plan.batch_size)):
            indices = _chunk_range(plan, k)
            expected = labels[indices.start : indices.stop]
            images = _read_chunk(_chunk_path(out, k), expected, shape[1:])
            picked.update({i: images[i - indices.start] for i in indices if i in wanted})
            yield images

    body = out / ".samples.npz.tmp"
    _write_npz(body, chunks(), shape)
    _write_grid(out / "grid.png", rows, picked, names)
    body.replace(out / "samples.npz")  # last: samples.npz marks a complete run
    shutil.rmtree(out / "chunks")


# ---------------------------------------------------------------------------------------


def sample_images(
    loaded: Loaded, plan: Plan, out: str | Path, accelerator, progress: bool = True
) -> Result:
    """Sample ``plan`` into ``out`` on every process of ``accelerator``, continuing the
    finished chunks of an interrupted run with the same settings."""
    from tqdm import tqdm

    out = Path(out)
    if loaded.ar is None:
        raise only_a_vae(loaded.description)
    labels = class_labels(plan.n, loaded.recipe.ar.num_classes, plan.labels, plan.seed)
    record = settings_record(loaded, plan, accelerator.device)
    check_settings(out, record)
    num_chunks = math.ceil(plan.n / plan.batch_size)
    main = accelerator.is_main_process
    if (out / "samples.npz").is_file():
        if main and (out / "chunks").exists():
            shutil.rmtree(out / "chunks")  # left by a run killed just after it finished
        return Result(out, plan.n, [0] * accelerator.num_processes, 0, 0.0)

    def finished() -> int:
        return sum(len(_chunk_range(plan, k)) for k in range(num_chunks)
                   if _chunk_path(out, k).is_file())  # fmt: skip

    start = time.perf_counter()
    reused = sum(_chunk_path(out, k).is_file() for k in range(num_chunks))
    bar = tqdm(total=plan.n, initial=finished(), unit="img", desc="sample",
               disable=not (progress and main))  # fmt: skip
    if main:
        (out / "chunks").mkdir(parents=True, exist_ok=True)
        if not (out / SETTINGS).is_file():
            _write_json(out / SETTINGS, record)
    accelerator.wait_for_everyone()  # no chunk is written before every process counted
    loaded.ar.to(accelerator.device).eval()
    loaded.vae.to(accelerator.device).eval()
    made = 0
    for k in range(accelerator.process_index, num_chunks, accelerator.num_processes):
        path = _chunk_path(out, k)
        if path.is_file():
            continue
        indices = _chunk_range(plan, k)
        images = sample_chunk(loaded, plan, labels, indices, accelerator)
        _write_chunk(path, images, labels[indices.start : indices.stop])
        made += 1
        if main:  # every process's chunks count: the rate is the whole run's
            bar.update(finished() - bar.n)
    accelerator.wait_for_everyone()
    bar.update(finished() - bar.n)
    bar.close()
    counts = accelerator.gather(torch.tensor([made], device=accelerator.device)).tolist()
    if main:
        _assemble(out, plan, labels, loaded.recipe.vae.resolution, record["class_names"])
    accelerator.wait_for_everyone()
    return Result(out, plan.n, counts, reused, time.perf_counter() - start)
