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
    token_stats.json, token_norms.png
                    the generated tokens' norms and per-dimension variances, beside the
                    data's where its latent cache is at hand (``spherear.token_stats``)
    samples.npz     arr_0: N x H x W x 3 uint8; written last, so it marks a complete run

Every file is written under a temporary name and renamed when whole. The settings record
the numerics (device, CPU instruction set, thread count): a continued run takes the
recorded thread count, so its images are those of an uninterrupted run. A damaged
``samples.npz`` (a truncated copy) is found on the next run and sampled again.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import zipfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from spherear import numerics
from spherear.checkpoints import Loaded
from spherear.errors import SpherearError
from spherear.files import (
    atomic_write,
    check_output,
    differences,
    note,
    read_json,
    remove,
    sweep,
    write_json,
)
from spherear.folder_lock import hold
from spherear.models.token_space import normalisation
from spherear.precision import held_in
from spherear.sample_plan import Plan, SampleError, class_labels, only_a_vae
from spherear.token_stats import token_sums

SETTINGS = "settings.json"
# bump when the streams, the chunking, the arithmetic or the quantisation change, so old
# chunks never mix in (2: time embeddings and condition projections computed once, RoPE;
# 3: chunks carry their tokens' sums)
SCHEME = 3
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
    record = {
        **asdict(plan),
        "checkpoint": loaded.description,
        "weights_sha256": _weights_sha256(loaded.vae, loaded.ar),
        "numerics": numerics.describe(device),
        "scheme": SCHEME,
        "class_names": list(loaded.recipe.ar.class_names),  # the data's, recorded by train-ar
        # where each token went back onto the sphere, "auto" resolved for this model
        "normalisation": normalisation(plan.sampling, loaded.recipe.ar),
    }
    return json.loads(json.dumps(record))  # as it reads back from settings.json


# what a settings.json from before each option was added means by leaving it out
BEFORE_OPTIONS = {"temperature": 1.0, "normalise": "auto", "normalisation": "after_cfg",
                  "only_class": None}  # fmt: skip
# where the weights were read from may move and classes be renamed; the weights' hash is
# what must match
DESCRIPTIVE = {"checkpoint", "class_names"}


def saved_settings(out: Path) -> dict | None:
    """What an earlier run recorded in ``out`` (None if it did not start)."""
    path = out / SETTINGS
    if not path.is_file():
        return None
    saved = read_json(path, f"delete {out} and rerun to sample it from the start")
    if not isinstance(saved, dict):
        raise SampleError(f"{path}: not a settings record; delete {out} and rerun")
    return saved


def check_settings(out: Path, saved: dict | None, record: dict) -> None:
    if saved is not None:  # folders from before these options: temperature 1, the paper's order
        before = {k: v for k, v in BEFORE_OPTIONS.items() if k in record}
        saved = {**before, **saved}
    differ = differences(saved, record, DESCRIPTIVE) if saved is not None else ""
    if differ:
        raise SampleError(
            f"{out} holds samples made with other settings ({differ}); pass another --out, "
            "or the same arguments to continue it"
        )


# ---------------------------------------------------------------------------------------
# Chunks


def _chunk_path(out: Path, k: int) -> Path:
    return out / "chunks" / f"chunk-{k:06d}.npz"


def _chunk_range(plan: Plan, k: int) -> range:
    return range(k * plan.batch_size, min(plan.n, (k + 1) * plan.batch_size))


def sample_chunk(
    loaded: Loaded, plan: Plan, labels: np.ndarray, indices: range, accelerator
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Images ``indices`` as (B, H, W, 3) uint8, and the sums of their tokens. The tokens
    are drawn in the precision ``loaded.ar`` is held in (``spherear.precision.held_in``);
    the VAE decodes in fp32, about 1% of the time, so that bf16 does not round the pixels
    before their quantisation."""
    device = accelerator.device
    y = torch.as_tensor(labels[indices.start : indices.stop], device=device)
    generators = noise_generators(plan.seed, indices, device)
    with torch.inference_mode():
        tokens = loaded.ar.sample(y, plan.sampling, generators)
        images = loaded.vae.decode(loaded.ar.to_latents(tokens))
    if not torch.isfinite(images).all():
        raise SampleError(
            f"images {indices.start}..{indices.stop - 1} came out NaN or infinite, so they "
            "would be saved black; the weights or the settings (--cfg, --temperature) are "
            "broken: check them with `spherear info`, or use an earlier checkpoint"
        )
    pixels = to_uint8(images)
    if pixels.min() == pixels.max():
        raise SampleError(
            f"images {indices.start}..{indices.stop - 1} are all one flat colour (value "
            f"{pixels.min()}), not samples; the weights or the settings (--cfg, --temperature) "
            "are broken: check them, or use an earlier checkpoint"
        )
    return pixels, token_sums(tokens)


def _write_chunk(path: Path, images: np.ndarray, labels: np.ndarray, sums: dict) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, images=images, labels=labels, **{f"tokens_{k}": v for k, v in sums.items()})

    atomic_write(path, write, "sample/chunk")


def _read_sums(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as chunk:
        return {k.removeprefix("tokens_"): chunk[k] for k in chunk.files if k.startswith("tokens_")}


def _write_token_stats(out: Path, sums: dict, data: dict | None, record: dict) -> None:
    """token_stats.json and token_norms.png: the samples' figures beside the data's."""
    from spherear.token_stats import plot, summarise

    figures = {"samples": summarise(sums)}
    if data is not None:
        figures["data"] = summarise(data)
    settings = {k: record.get(k) for k in ("cfg", "cfg_schedule", "sampler", "steps",
                                           "temperature", "normalisation")}  # fmt: skip
    write_json(out / "token_stats.json", {"settings": settings, **figures}, "sample/token-stats")
    title = ", ".join(f"{k} {v}" for k, v in settings.items())
    plot(figures, out / "token_norms.png", title)


def _read_chunk(path: Path, labels: np.ndarray, image_shape: tuple[int, ...]) -> np.ndarray:
    """A chunk's images, if it holds ``labels`` and images of ``image_shape``; a damaged
    chunk is deleted, so that the next run samples it again."""
    try:
        with np.load(path, allow_pickle=False) as chunk:
            images, found = chunk["images"], chunk["labels"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        remove(path, "sample/drop")
        raise SampleError(
            f"{path}: damaged ({type(e).__name__}), so it was deleted; rerun the same command "
            "to sample it again"
        ) from None
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
    from spherear.grids import save_grid

    blank = np.full_like(next(iter(picked.values())), 128)  # short rows stay aligned
    cells = []
    for row in rows.values():
        cells += [picked[i] for i in row] + [blank] * (GRID_PER_CLASS - len(row))
    images = torch.from_numpy(np.stack(cells)).permute(0, 3, 1, 2).float() / 127.5 - 1
    labels = [names[c] if names else f"class {c}" for c in rows]
    save_grid(images, path, nrow=GRID_PER_CLASS, row_labels=labels)


def _assemble(out: Path, plan: Plan, labels: np.ndarray, resolution: int, record: dict,
              data: dict | None) -> None:  # fmt: skip
    from spherear.token_stats import merge

    shape = (plan.n, resolution, resolution, 3)
    num_chunks = math.ceil(plan.n / plan.batch_size)
    sums = merge(_read_sums(_chunk_path(out, k)) for k in range(num_chunks))
    _write_token_stats(out, sums, data, record)
    names = record["class_names"]

    def chunk(k: int) -> np.ndarray:
        indices = _chunk_range(plan, k)
        return _read_chunk(_chunk_path(out, k), labels[indices.start : indices.stop], shape[1:])

    rows = _grid_indices(labels)
    wanted = sorted({i for row in rows.values() for i in row})
    picked = {}
    for k in sorted({i // plan.batch_size for i in wanted}):
        images = chunk(k)
        picked |= {i: images[i % plan.batch_size] for i in wanted if i // plan.batch_size == k}
    _write_grid(out / "grid.png", rows, picked, names)

    def save_labels(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, labels)

    atomic_write(out / "labels.npy", save_labels, "sample/labels")
    # last: samples.npz marks a complete run
    atomic_write(out / "samples.npz",
                 lambda tmp: _write_npz(tmp, (chunk(k) for k in range(num_chunks)), shape),
                 "sample/npz")  # fmt: skip
    remove(out / "chunks", "sample/cleanup")


def _data_sums(loaded: Loaded) -> dict | None:
    """The data's token sums, from the latent cache the recipe names, if it is here."""
    from spherear.token_stats import data_sums

    cache = Path(loaded.recipe.data.latents)
    if not (cache / "manifest.json").is_file():
        return None
    try:
        return data_sums(cache, loaded.recipe)
    except SpherearError as e:
        note(f"token_stats.json: without the data's figures ({e})")
        return None


def _check_complete(out: Path, plan: Plan, resolution: int) -> None:
    """Delete ``samples.npz`` if it is not whole (a truncated copy, say), so that it is
    sampled or assembled again."""
    from spherear.eval.npz import NpzImages

    path = out / "samples.npz"
    if not path.is_file():
        return
    expected = (plan.n, resolution, resolution, 3)
    try:
        shape = NpzImages(path).shape
        problem = None if shape == expected else f"arr_0 is {shape}, not {expected}"
    except SpherearError as e:
        problem = str(e).removeprefix(f"{path}: ").split("; ")[0]
    if problem is not None:
        note(f"{path}: damaged ({problem}); sampling it again")
        remove(path, "sample/drop")


# ---------------------------------------------------------------------------------------


def sample_images(
    loaded: Loaded, plan: Plan, out: str | Path, accelerator, progress: bool = True
) -> Result:
    """Sample ``plan`` into ``out`` on every process of ``accelerator``, continuing the
    finished chunks of an interrupted run with the same settings; one command at a time."""
    if loaded.ar is None:
        raise only_a_vae(loaded.description)
    check_output(out, "--out")
    with hold(out, "sample"):
        return _sample_images(loaded, plan, Path(out), accelerator, progress)


def _sample_images(loaded: Loaded, plan: Plan, out: Path, accelerator, progress: bool) -> Result:
    from tqdm import tqdm

    labels = class_labels(plan.n, loaded.recipe.ar.num_classes, plan.labels, plan.seed,
                          plan.only_class)  # fmt: skip
    main = accelerator.is_main_process
    saved = saved_settings(out)
    if saved is not None and isinstance(saved.get("numerics"), dict):
        numerics.adopt(saved["numerics"], accelerator.device, str(out),
                       note if main else lambda message: None)  # fmt: skip
    record = settings_record(loaded, plan, accelerator.device)
    check_settings(out, saved, record)
    num_chunks = math.ceil(plan.n / plan.batch_size)
    resolution = loaded.recipe.vae.resolution
    if main:
        _check_complete(out, plan, resolution)
    accelerator.wait_for_everyone()
    if (out / "samples.npz").is_file():
        if main:
            remove(out / "chunks", "sample/cleanup")  # left by a run killed as it finished
        return Result(out, plan.n, [0] * accelerator.num_processes, 0, 0.0)

    def finished() -> int:
        return sum(len(_chunk_range(plan, k)) for k in range(num_chunks)
                   if _chunk_path(out, k).is_file())  # fmt: skip

    start = time.perf_counter()
    if main:
        (out / "chunks").mkdir(parents=True, exist_ok=True)
        sweep(out)
        sweep(out / "chunks")
        if saved is None:
            write_json(out / SETTINGS, record, "sample/settings")
    accelerator.wait_for_everyone()  # no chunk is written before every process counted
    reused = sum(_chunk_path(out, k).is_file() for k in range(num_chunks))
    bar = tqdm(total=plan.n, initial=finished(), unit="img", desc="sample",
               disable=not (progress and main))  # fmt: skip
    ar = held_in(loaded.ar.to(accelerator.device).eval(), plan.precision)
    loaded = replace(loaded, ar=ar, vae=loaded.vae.to(accelerator.device).eval())
    made = 0
    for k in range(accelerator.process_index, num_chunks, accelerator.num_processes):
        path = _chunk_path(out, k)
        if path.is_file():
            continue
        indices = _chunk_range(plan, k)
        images, sums = sample_chunk(loaded, plan, labels, indices, accelerator)
        _write_chunk(path, images, labels[indices.start : indices.stop], sums)
        made += 1
        if main:  # every process's chunks count: the rate is the whole run's
            bar.update(finished() - bar.n)
    accelerator.wait_for_everyone()
    bar.update(finished() - bar.n)
    bar.close()
    counts = accelerator.gather(torch.tensor([made], device=accelerator.device)).tolist()
    if main:
        _assemble(out, plan, labels, resolution, record, _data_sums(loaded))
    accelerator.wait_for_everyone()
    return Result(out, plan.n, counts, reused, time.perf_counter() - start)
