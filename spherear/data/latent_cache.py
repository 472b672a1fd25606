"""The latent cache: the S-VAE posterior of every image, so AR training skips the encoder.

Layout of a cache folder::

    settings.json            what is being cached (written first; a rerun must match it)
    shard-XXXXX.safetensors  images [X * shard_size, (X + 1) * shard_size):
                             mu (N, V, T, D) fp16 unit directions, kappa (N, V, T) fp32,
                             labels (N,) int64, for V views of each image
    manifest.json            written last: the cache is complete

Each shard is written under a temporary name and renamed when whole, so a run killed at
any point leaves only whole shards; a rerun skips them. With several processes, rank r
encodes the shards i with i % world_size == r. A shard's content depends only on the data,
the VAE and the settings, never on the number of processes.

Views: 0 is the ADM centre crop, 1 its mirror image, then ``random_crops`` random crops,
each flipped with probability 1/2, seeded by (seed, image index, view). With
``augment.hflip = false`` there are no mirror images: no view 1, no flipped crops.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from spherear.config import Recipe, recipe_to_dict
from spherear.data.prepare import read_info, shard_files
from spherear.data.transforms import center_crop, random_crop, to_tensor
from spherear.errors import SpherearError
from spherear.hub_files import resolve
from spherear.models.power_spherical import PowerSpherical
from spherear.models.vae import SphericalVAE

MANIFEST = "manifest.json"
SETTINGS = "settings.json"


class CacheError(SpherearError):
    """A latent cache that cannot be used or continued."""


def file_fingerprint(path: str | Path) -> str:
    """sha256 of a checkpoint: the file, or a folder's safetensors and config files."""
    path = resolve(path)[0]  # an hf:// address: its copy in the Hugging Face cache
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


@dataclass
class _ImageTable:
    """Random access to the images of a prepared dataset, by global index."""

    files: list[Path]
    offsets: list[int]

    @classmethod
    def open(cls, data_dir: Path) -> _ImageTable:
        files = shard_files(data_dir)
        counts = [pq.ParquetFile(f).metadata.num_rows for f in files]
        return cls(files, [0, *np.cumsum(counts).tolist()])

    @property
    def num_images(self) -> int:
        return self.offsets[-1]

    def rows(self, start: int, stop: int) -> list[dict]:
        out = []
        for i, f in enumerate(self.files):
            lo, hi = max(start, self.offsets[i]), min(stop, self.offsets[i + 1])
            if lo < hi:
                table = pq.read_table(f, columns=["image", "label"])
                out += table.slice(lo - self.offsets[i], hi - lo).to_pylist()
        return out


def _settings(recipe: Recipe, vae_path: Path, data_dir: Path, num_images: int) -> dict:
    return {
        "vae_sha256": file_fingerprint(vae_path),
        "vae": recipe_to_dict(recipe)["vae"],
        "cache": recipe_to_dict(recipe)["cache"],
        "views": view_names(recipe),
        "random_crop_min": recipe.augment.random_crop_min,
        "data": str(data_dir.resolve()),
        "data_settings": read_info(data_dir)["settings"],
        "num_images": num_images,
    }


def _encode_shard(vae, table, index, recipe, out, device) -> None:
    cfg = recipe.cache
    start = index * cfg.shard_size
    rows = table.rows(start, min(start + cfg.shard_size, table.num_images))
    views = []
    for offset, row in enumerate(rows):
        image = Image.open(io.BytesIO(row["image"]["bytes"])).convert("RGB")
        views += make_views(image, start + offset, recipe)
    num_views = len(view_names(recipe))
    mus, kappas = [], []
    with torch.no_grad():
        for b in range(0, len(views), cfg.batch_size):
            batch = torch.stack([to_tensor(v) for v in views[b : b + cfg.batch_size]])
            autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
            with autocast:
                posterior = vae.encode(batch.to(device))
            mus.append(posterior.mu.half().cpu())
            kappas.append(posterior.kappa.float().cpu())
    n = len(rows)
    tensors = {
        "mu": torch.cat(mus).view(n, num_views, *mus[0].shape[1:]).contiguous(),
        "kappa": torch.cat(kappas).view(n, num_views, -1).contiguous(),
        "labels": torch.tensor([row["label"] for row in rows], dtype=torch.int64),
    }
    final = out / f"shard-{index:05d}.safetensors"
    tmp = out / f".shard-{index:05d}.tmp"
    save_file(tensors, tmp)
    tmp.replace(final)  # a killed run leaves a .tmp that the next run overwrites


def cache_latents(
    recipe: Recipe,
    vae: SphericalVAE,
    vae_path: str | Path,
    data_dir: str | Path,
    out: str | Path,
    accelerator=None,
    progress: bool = True,
) -> dict:
    """Encode a prepared dataset into ``out``; returns the manifest."""
    from accelerate import Accelerator
    from tqdm import tqdm

    accelerator = accelerator or Accelerator()
    out, data_dir = Path(out), Path(data_dir)
    table = _ImageTable.open(data_dir)
    settings = _settings(recipe, Path(vae_path), data_dir, table.num_images)
    if (out / MANIFEST).is_file():
        manifest = json.loads((out / MANIFEST).read_text())
        if manifest["settings"] != settings:
            raise CacheError(
                f"{out} holds a complete cache made with other settings (VAE, data or views); "
                "choose another --out or delete it"
            )
        return manifest
    if (out / SETTINGS).is_file() and json.loads((out / SETTINGS).read_text()) != settings:
        raise CacheError(
            f"{out} holds an unfinished cache made with other settings (VAE, data or views); "
            "rerun with those, or delete the folder to start over"
        )
    if out.exists() and not (out / SETTINGS).is_file() and any(out.iterdir()):
        raise CacheError(f"{out} exists and is not a latent cache; choose another --out")
    # every process has checked the folder as it was before anyone writes to it
    accelerator.wait_for_everyone()
    if accelerator.is_main_process and not (out / SETTINGS).is_file():
        out.mkdir(parents=True, exist_ok=True)
        (out / ".settings.tmp").write_text(json.dumps(settings, indent=1))
        (out / ".settings.tmp").replace(out / SETTINGS)
    accelerator.wait_for_everyone()

    num_shards = math.ceil(table.num_images / recipe.cache.shard_size)
    mine = range(accelerator.process_index, num_shards, accelerator.num_processes)
    todo = [i for i in mine if not (out / f"shard-{i:05d}.safetensors").is_file()]
    vae = vae.to(accelerator.device).eval()
    start, encoded = time.time(), 0
    bar = tqdm(todo, unit="shard", desc="cache-latents",
               disable=not (progress and accelerator.is_main_process))  # fmt: skip
    for index in bar:
        _encode_shard(vae, table, index, recipe, out, accelerator.device)
        encoded += min(recipe.cache.shard_size, table.num_images - index * recipe.cache.shard_size)
        bar.set_postfix(images_per_s=f"{encoded / (time.time() - start):.1f}")
    accelerator.wait_for_everyone()
    manifest = {
        "settings": settings,
        "class_names": read_info(data_dir)["class_names"],  # labels' names, for train-ar
        "num_shards": num_shards,
        "num_tokens": recipe.vae.num_tokens,
        "latent_dim": recipe.vae.latent_dim,
        "bytes_per_view": recipe.vae.num_tokens * (2 * recipe.vae.latent_dim + 4),
        "num_processes": accelerator.num_processes,
    }
    if accelerator.is_main_process:
        missing = [
            i for i in range(num_shards) if not (out / f"shard-{i:05d}.safetensors").is_file()
        ]
        if missing:
            raise CacheError(f"{out}: shards {missing[:5]} are missing after the run; rerun it")
        (out / MANIFEST).write_text(json.dumps(manifest, indent=1))
    accelerator.wait_for_everyone()
    return manifest


def read_manifest(cache_dir: str | Path) -> dict:
    path = Path(cache_dir) / MANIFEST
    if not path.is_file():
        raise CacheError(
            f"{cache_dir}: not a complete latent cache (no {MANIFEST}); run or rerun "
            "`spherear cache-latents`"
        )
    return json.loads(path.read_text())


class LatentDataset(torch.utils.data.Dataset):
    """AR training data from a cache. Each visit picks one cached view at random and draws
    a fresh sample from its posterior, so every epoch sees new tokens (the paper's
    posterior-sample augmentation); items are (tokens (T, D) on the sphere, label)."""

    def __init__(self, cache_dir: str | Path):
        self.dir = Path(cache_dir)
        self.manifest = read_manifest(cache_dir)
        self.shard_size = self.manifest["settings"]["cache"]["shard_size"]
        self.num_images = self.manifest["settings"]["num_images"]
        self.num_views = len(self.manifest["settings"]["views"])
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

    def posterior(self, i: int, view: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        shard = self._shard(i // self.shard_size)
        j = i % self.shard_size
        mu = shard.get_slice("mu")[j : j + 1, view : view + 1][0, 0].float()
        kappa = shard.get_slice("kappa")[j : j + 1, view : view + 1][0, 0]
        label = int(shard.get_slice("labels")[j : j + 1][0])
        return mu, kappa, label

    def draw(self, i: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, int]:
        """A random view's fresh posterior sample: tokens (T, D) on the sphere, and the label."""
        tokens, labels = self.draw_batch([i], [generator or torch.default_generator])
        return tokens[0], int(labels[0])

    def draw_batch(
        self, indices: Sequence[int], generators: Sequence[torch.Generator]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``draw`` for many images, image j from generator j alone: the same tokens
        (B, T, D) as one by one, with the sphere maths done once for the batch. The
        generators must be distinct objects: each draws its view, then its sample."""
        views = [int(torch.randint(self.num_views, (), generator=g)) for g in generators]
        posteriors = [self.posterior(i, v) for i, v in zip(indices, views, strict=True)]
        mu = torch.stack([p[0] for p in posteriors])
        kappa = torch.stack([p[1] for p in posteriors])
        tokens = PowerSpherical(mu, kappa).sample(generators) * math.sqrt(mu.shape[-1])
        return tokens, torch.tensor([p[2] for p in posteriors])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.draw(i)
