"""The latent cache: the S-VAE posterior of every image, so AR training skips the encoder.

Layout of a cache folder::

    settings.json            what is being cached (written first; a rerun must match it)
    shard-XXXXX.safetensors  images [X * shard_size, (X + 1) * shard_size):
                             mu (N, V, T, D) fp16 unit directions, kappa (N, V, T) fp32,
                             labels (N,) int64, for V views of each image (a Gaussian
                             posterior: mean and logvar (N, V, T, D) fp32 instead)
    manifest.json            written last: the cache is complete; each shard's size and
                             sha256

Each shard is written under a temporary name and renamed when whole, so a run killed at
any point leaves only whole shards; a rerun skips them. With several processes, rank r
encodes the shards i with i % world_size == r. A shard's content depends only on the data
(identified by its content, not its path, so a moved workspace still matches), the VAE,
the settings and the numerics (device, thread count), never on the number of processes.
Rerunning on a complete cache checks every shard against the manifest and encodes a
damaged one again; training checks every shard's size.

Views: 0 is the ADM centre crop, 1 its mirror image, then ``random_crops`` random crops,
each flipped with probability 1/2, seeded by (seed, image index, view). With
``augment.hflip = false`` there are no mirror images: no view 1, no flipped crops.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save

from spherear import numerics
from spherear.accelerator import make_accelerator
from spherear.config import Recipe, VAEConfig, recipe_to_dict
from spherear.data.prepare import PreparedImages, data_fingerprint
from spherear.data.transforms import center_crop, random_crop, to_tensor
from spherear.errors import SpherearError
from spherear.files import (
    TEMPORARY,
    DamagedError,
    atomic_write,
    check_record,
    check_safetensors,
    differences,
    file_record,
    note,
    read_json,
    remove,
    sweep,
    write_json,
)
from spherear.folder_kinds import CACHE, check_output_folder
from spherear.folder_lock import hold
from spherear.hub_files import resolve
from spherear.models.vae import POSTERIORS, SphericalVAE
from spherear.precision import autocast, of_recipe

MANIFEST = "manifest.json"
SETTINGS = "settings.json"


class CacheError(SpherearError):
    """A latent cache that cannot be used or continued."""


def file_fingerprint(path: str | Path) -> str:
    """sha256 of a checkpoint: the file, or a folder's safetensors and config files."""
    path = resolve(path)[0]  # an hf:// address: its copy in the Hugging Face cache
    if not path.exists():
        raise CacheError(f"{path}: no such file or folder (the VAE checkpoint)")
    files = [path] if path.is_file() else sorted(
        p for p in path.iterdir() if p.suffix in (".safetensors", ".json")
    )  # fmt: skip
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.name.encode())
        with open(f, "rb") as handle:
            while chunk := handle.read(1 << 24):
                digest.update(chunk)
    return digest.hexdigest()


def view_names(recipe: Recipe) -> list[str]:
    flipped = ["center_flip"] if recipe.augment.hflip else []
    return ["center", *flipped] + [f"random_{k}" for k in range(recipe.cache.random_crops)]


def make_views(image: Image.Image, index: int, recipe: Recipe) -> list[Image.Image]:
    size, cfg, aug = recipe.vae.resolution, recipe.cache, recipe.augment
    centre = center_crop(image, size)
    views = [centre, centre.transpose(Image.FLIP_LEFT_RIGHT)] if aug.hflip else [centre]
    for k in range(cfg.random_crops):
        rng = np.random.default_rng([cfg.seed, index, k])
        view = random_crop(image, size, aug.random_crop_min, rng)
        flip = rng.uniform() < 0.5  # drawn either way: a crop does not depend on augment.hflip
        views.append(view.transpose(Image.FLIP_LEFT_RIGHT) if flip and aug.hflip else view)
    return views


def _settings(recipe: Recipe, vae_path: Path, data_dir: Path, num_images: int, device) -> dict:
    return {
        "vae_sha256": file_fingerprint(vae_path),
        "vae": recipe_to_dict(recipe)["vae"],
        "cache": recipe_to_dict(recipe)["cache"],
        "views": view_names(recipe),
        "random_crop_min": recipe.augment.random_crop_min,
        "data_fingerprint": data_fingerprint(data_dir),
        "num_images": num_images,
        "numerics": numerics.describe(device),
        "precision": of_recipe(recipe.train.mixed_precision),
    }


def _encode_shard(vae, images: PreparedImages, index, recipe, out, device) -> None:
    cfg = recipe.cache
    start = index * cfg.shard_size
    stop = min(start + cfg.shard_size, len(images))
    views, labels = [], []
    for i in range(start, stop):
        image, label = images[i]
        views += make_views(image, i, recipe)
        labels.append(label)
    num_views = len(view_names(recipe))
    kinds = POSTERIORS[recipe.vae.posterior].CACHED
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in kinds}
    with torch.no_grad():
        for b in range(0, len(views), cfg.batch_size):
            batch = torch.stack([to_tensor(v) for v in views[b : b + cfg.batch_size]])
            with autocast(device, of_recipe(recipe.train.mixed_precision)):
                posterior = vae.encode(batch.to(device))
            for name, value in posterior.cached().items():
                parts[name].append(value.to(kinds[name]).cpu())
    n = len(labels)
    tensors = {name: torch.cat(values).view(n, num_views, *values[0].shape[1:]).contiguous()
               for name, values in parts.items()}  # fmt: skip
    tensors["labels"] = torch.tensor(labels, dtype=torch.int64)
    atomic_write(_shard_path(out, index), save(tensors), "cache/shard")


def _shard_path(out: Path, index: int) -> Path:
    return out / f"shard-{index:05d}.safetensors"


def _fix(out: Path) -> str:
    return f"delete {out} and rerun `spherear cache-latents` to encode it again"


@dataclass
class Cached:
    out: Path
    manifest: dict

    def summary(self) -> str:
        s = self.manifest["settings"]
        views = f"{len(s['views'])} view" + ("s" if len(s["views"]) > 1 else "")
        return (
            f"cached {s['num_images']} images x {views} ({', '.join(s['views'])}) in {self.out} "
            f"({self.manifest['bytes_per_view']} bytes per image per view)"
        )


def cache_recipe(
    recipe: Recipe,
    vae: str | None = None,
    data: str | Path | None = None,
    out: str | Path | None = None,
    accelerator=None,
    progress: bool = True,
) -> Cached | None:
    """``spherear cache-latents``: the prepared data (default: ``data.prepared``) encoded by
    the S-VAE ``vae`` (default: ``train.vae_checkpoint``), which must be the recipe's
    ``[vae]``, into ``out`` (default: ``data.latents``). None on the processes other than
    the first."""
    from spherear.checkpoints import load_vae

    vae = vae or recipe.train.vae_checkpoint
    if not vae:
        raise CacheError("the recipe sets no train.vae_checkpoint; pass --vae with a trained S-VAE")
    loaded = load_vae(vae, recipe.vae)
    accelerator = accelerator or make_accelerator()
    out = Path(out or recipe.data.latents)
    manifest = cache_latents(recipe, loaded.vae, vae, data or recipe.data.prepared, out,
                             accelerator, progress)  # fmt: skip
    return Cached(out, manifest) if accelerator.is_main_process else None


def cache_latents(
    recipe: Recipe,
    vae: SphericalVAE,
    vae_path: str | Path,
    data_dir: str | Path,
    out: str | Path,
    accelerator=None,
    progress: bool = True,
) -> dict:
    """Encode a prepared dataset into ``out``, one command at a time; returns the manifest."""
    check_output_folder(out, CACHE, "--out", [data_dir, vae_path])
    # refused before the lock is taken; a killed run's temporaries are no content
    content = (
        [p for p in Path(out).iterdir() if not TEMPORARY.match(p.name)]
        if Path(out).is_dir()
        else []
    )
    if _saved_settings(Path(out)) is None and content:
        raise CacheError(f"{out} exists and is not a latent cache; choose another --out")
    with hold(out, "cache-latents"):
        return _cache_latents(recipe, vae, vae_path, data_dir, out, accelerator, progress)


def _cache_latents(
    recipe: Recipe, vae: SphericalVAE, vae_path: str | Path, data_dir: str | Path,
    out: str | Path, accelerator, progress: bool,
) -> dict:  # fmt: skip
    from tqdm import tqdm

    accelerator = accelerator or make_accelerator()
    main = accelerator.is_main_process
    say = note if main else (lambda message: None)
    out, data_dir = Path(out), Path(data_dir)
    if main:
        sweep(out)
    accelerator.wait_for_everyone()  # nobody looks at the folder before it is swept
    images = PreparedImages(data_dir)
    saved = _saved_settings(out)
    if saved is not None:
        numerics.adopt(saved.get("numerics", {}), accelerator.device, str(out), say)
    settings = _settings(recipe, Path(vae_path), data_dir, len(images), accelerator.device)
    if saved is not None:  # caches from before the setting: bf16 on CUDA, else fp32
        saved = {"precision": "bf16" if accelerator.device.type == "cuda" else "fp32", **saved}
    differ = differences(saved, settings) if saved is not None else ""
    if differ:
        complete = "a complete" if (out / MANIFEST).is_file() else "an unfinished"
        raise CacheError(
            f"{out} holds {complete} cache made with other settings ({differ}); rerun with "
            "those, or choose another --out (or delete it to start over)"
        )
    num_shards = math.ceil(len(images) / recipe.cache.shard_size)
    # every process has checked the folder as it was before anyone writes to it
    accelerator.wait_for_everyone()
    if main:
        if saved is None:
            write_json(out / SETTINGS, settings, "cache/settings")
        for index, problem in _damaged(out, num_shards):
            say(f"{_shard_path(out, index)}: damaged ({problem}); encoding it again")
            remove(out / MANIFEST, "cache/reopen")
            remove(_shard_path(out, index), "cache/drop")
    accelerator.wait_for_everyone()
    if (out / MANIFEST).is_file():
        return read_manifest(out)

    mine = range(accelerator.process_index, num_shards, accelerator.num_processes)
    todo = [i for i in mine if not _shard_path(out, i).is_file()]
    vae = vae.to(accelerator.device).eval()
    start, encoded = time.time(), 0
    bar = tqdm(todo, unit="shard", desc="cache-latents", disable=not (progress and main))
    for index in bar:
        _encode_shard(vae, images, index, recipe, out, accelerator.device)
        encoded += min(recipe.cache.shard_size, len(images) - index * recipe.cache.shard_size)
        bar.set_postfix(images_per_s=f"{encoded / (time.time() - start):.1f}")
    accelerator.wait_for_everyone()
    manifest = {
        "settings": settings,
        "class_names": images.info["class_names"],  # labels' names, for train-ar
        "num_shards": num_shards,
        "num_tokens": recipe.vae.num_tokens,
        "latent_dim": recipe.vae.latent_dim,
        "bytes_per_view": _bytes_per_token(recipe.vae) * recipe.vae.num_tokens,
        "num_processes": accelerator.num_processes,
        "data": os.path.relpath(data_dir.resolve(), out.resolve()),
    }
    if main:
        missing = [i for i in range(num_shards) if not _shard_path(out, i).is_file()]
        if missing:
            raise CacheError(f"{out}: shards {missing[:5]} are missing after the run; rerun it")
        manifest["files"] = {_shard_path(out, i).name: file_record(_shard_path(out, i))
                             for i in range(num_shards)}  # fmt: skip
        write_json(out / MANIFEST, manifest, "cache/manifest")
    accelerator.wait_for_everyone()
    return read_manifest(out) if not main else manifest


def _bytes_per_token(vae: VAEConfig) -> int:
    """What the cache stores of one token's posterior: mu in fp16 and kappa in fp32, or a
    Gaussian's mean and log-variance in fp32."""
    return 2 * vae.latent_dim + 4 if vae.posterior == "power_spherical" else 8 * vae.latent_dim


def _saved_settings(out: Path) -> dict | None:
    """The settings an earlier run recorded in ``out``, if it holds a cache."""
    if not (out / SETTINGS).is_file():
        return None
    saved = read_json(out / SETTINGS, _fix(out))
    if not isinstance(saved, dict):
        raise DamagedError(f"{out / SETTINGS}: not a settings record; {_fix(out)}")
    return saved


def _damaged(out: Path, num_shards: int) -> list[tuple[int, str]]:
    """Shards that are not whole: against the manifest's records (every byte read) when the
    cache is complete, else by their headers (a kill never leaves a partial shard, but a
    truncated copy might)."""
    records = {}
    if (out / MANIFEST).is_file():
        try:
            records = read_json(out / MANIFEST, "").get("files", {})
        except (DamagedError, AttributeError):
            note(f"{out / MANIFEST}: damaged; checking the shards and writing it again")
            remove(out / MANIFEST, "cache/reopen")  # written last: the shards say the rest
    found = []
    for index in range(num_shards):
        path = _shard_path(out, index)
        if not path.is_file():
            continue
        record = records.get(path.name)
        problem = check_record(path, record) if record else check_safetensors(path)
        if problem:
            found.append((index, problem))
    return found


def read_manifest(cache_dir: str | Path) -> dict:
    """The manifest of a complete cache, every shard checked to have its recorded size."""
    cache_dir = Path(cache_dir)
    path = cache_dir / MANIFEST
    if not path.is_file():
        raise CacheError(
            f"{cache_dir}: not a complete latent cache (no {MANIFEST}); run or rerun "
            "`spherear cache-latents`"
        )
    rerun = "rerun `spherear cache-latents` with the same arguments to encode it again"
    manifest = read_json(path, rerun)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("settings"), dict):
        raise DamagedError(f"{path}: not a latent cache manifest; {rerun}")
    for name, record in manifest.get("files", {}).items():
        problem = check_record(cache_dir / name, record, content=False)
        if problem:
            raise DamagedError(f"{cache_dir / name}: damaged ({problem}); {rerun}")
    return manifest


class LatentDataset(torch.utils.data.Dataset):
    """AR training data from a cache. Each visit picks one cached view at random and draws
    a fresh sample from its posterior, so every epoch sees new tokens (the paper's
    posterior-sample augmentation); items are (latents (T, D), label): an S-VAE's on the
    sphere, a Gaussian VAE's as drawn (``spherear.models.token_space`` makes tokens)."""

    def __init__(self, cache_dir: str | Path):
        self.dir = Path(cache_dir)
        self.manifest = read_manifest(cache_dir)
        self.shard_size = self.manifest["settings"]["cache"]["shard_size"]
        self.num_images = self.manifest["settings"]["num_images"]
        self.num_views = len(self.manifest["settings"]["views"])
        # caches from before the Gaussian posterior are all power-spherical
        self.posterior_kind = self.manifest["settings"]["vae"].get("posterior", "power_spherical")
        self._handles: dict[int, object] = {}

    def __len__(self) -> int:
        return self.num_images

    def labels(self) -> np.ndarray:
        """Every image's label, in cache order."""
        shards = range(self.manifest["num_shards"])
        return np.concatenate([self._shard(i).get_tensor("labels").numpy() for i in shards])

    def _shard(self, index: int):
        if index not in self._handles:  # memory-mapped; opened lazily in each worker
            path = self.dir / f"shard-{index:05d}.safetensors"
            self._handles[index] = safe_open(path, framework="pt")
        return self._handles[index]

    def posterior(self, i: int, view: int) -> tuple[dict[str, torch.Tensor], int]:
        """The cached posterior parameters of image ``i``'s ``view`` (fp32), and its label."""
        shard = self._shard(i // self.shard_size)
        j = i % self.shard_size
        params = {name: shard.get_slice(name)[j : j + 1, view : view + 1][0, 0].float()
                  for name in POSTERIORS[self.posterior_kind].CACHED}  # fmt: skip
        return params, int(shard.get_slice("labels")[j : j + 1][0])

    def draw(self, i: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, int]:
        """A random view's fresh posterior sample (T, D), and the label."""
        latents, labels = self.draw_batch([i], [generator or torch.default_generator])
        return latents[0], int(labels[0])

    def draw_batch(
        self, indices: Sequence[int], generators: Sequence[torch.Generator]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``draw`` for many images, image j from generator j alone: the same latents
        (B, T, D) as one by one, with the sphere maths done once for the batch. The
        generators must be distinct objects: each draws its view, then its sample."""
        views = [int(torch.randint(self.num_views, (), generator=g)) for g in generators]
        posteriors = [self.posterior(i, v) for i, v in zip(indices, views, strict=True)]
        params = {name: torch.stack([p[0][name] for p in posteriors]) for name in posteriors[0][0]}
        latents = POSTERIORS[self.posterior_kind](**params).draw(generators)
        return latents, torch.tensor([p[1] for p in posteriors])

    def latent_std(self, max_images: int = 1000, seed: int = 0) -> float:
        """The standard deviation of every number of the posterior samples of the first
        ``max_images`` images (all views): one scale for the whole latent space."""
        indices = range(min(max_images, self.num_images))
        generators = [torch.Generator().manual_seed(seed + i) for i in indices]
        latents, _ = self.draw_batch(list(indices), generators)
        return float(latents.double().std())

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.draw(i)
