"""What train-ar trains on: the latent cache (checked to come from the recipe's S-VAE and
views) or the prepared images, the classes they hold (written into the recipe), and every
random draw of a micro-batch.

Either way each visit of an image draws a fresh posterior sample, and every random draw of
an example is seeded by (seed, step, position in the global batch); see
``spherear.train.batches``.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from spherear.config import ARConfig, Recipe, RecipeError
from spherear.data.latent_cache import LatentDataset, file_fingerprint, view_names
from spherear.data.prepare import PreparedImages, read_info
from spherear.data.transforms import to_tensor, train_view
from spherear.models.token_space import latents_to_tokens
from spherear.train import TrainingError
from spherear.train.batches import BatchPlan, StepBatches


def open_inputs(recipe: Recipe) -> tuple[PreparedImages | LatentDataset, Recipe]:
    """The training data of ``recipe`` and the recipe with the data's classes (and, for
    Gaussian latents, their scale), refused in one line before any work when it does not
    fit the recipe."""
    source = _source(recipe)
    names, where = _data_classes(recipe, source)
    recipe = with_data_classes(recipe, names, where)
    recipe = with_latent_scale(recipe, source)
    check_labels(source.labels(), len(names), recipe.data.latents
                 if isinstance(source, LatentDataset) else recipe.data.prepared)  # fmt: skip
    return source, recipe


class MicroBatches(StepBatches):
    """AR inputs (a latent sample, or an augmented image to encode) and the draws of the
    loss: class dropout, and the flow time and noise of each token copy."""

    def __init__(self, recipe: Recipe, source, plan: BatchPlan, rank: int, first: int, last: int):
        super().__init__(len(source), plan, rank, first, last, recipe.run.seed)
        self.recipe, self.source = recipe, source

    def make_batch(self, indices: list[int], seeds: list[int], epoch: float):
        vae, ar, aug = self.recipe.vae, self.recipe.ar, self.recipe.augment
        generators = [torch.Generator().manual_seed(seed) for seed in seeds]
        if isinstance(self.source, PreparedImages):
            decay = (aug.crop_decay_start_epoch, aug.crop_decay_end_epoch)
            views, labels = [], []
            for index, seed in zip(indices, seeds, strict=True):
                image, label = self.source[index]
                views.append(to_tensor(train_view(image, vae.resolution, epoch,
                                                  np.random.default_rng(seed), aug.random_crop_min,
                                                  aug.hflip, decay)))  # fmt: skip
                labels.append(label)
            x, labels = torch.stack(views), torch.tensor(labels)
        else:  # the posterior draws first, then the loss's: each generator's order is fixed
            latents, labels = self.source.draw_batch(indices, generators)
            x = latents_to_tokens(latents, vae, ar)
        k, n, d = ar.diff_batch_mul, vae.num_tokens, vae.latent_dim
        drop = [torch.rand((), generator=g) < ar.class_dropout for g in generators]
        return {
            "x": x,
            "label": labels,
            "drop": torch.stack(drop),
            "t": torch.stack([torch.sigmoid(torch.randn(k, n, generator=g)) for g in generators]),
            "noise": torch.stack([torch.randn(k, n, d, generator=g) for g in generators]),
            "seed": torch.tensor(seeds),
        }


def encode(vae, images: torch.Tensor, seeds: torch.Tensor, ar: ARConfig) -> torch.Tensor:
    """On-the-fly inputs: tokens of posterior samples drawn from each image's own seed."""
    with torch.no_grad():
        posterior = vae.encode(images)
    cpu = type(posterior)(
        **{name: value.float().cpu() for name, value in posterior.cached().items()}
    )
    generators = [torch.Generator().manual_seed(int(seed) + 1) for seed in seeds]
    return latents_to_tokens(cpu.draw(generators), vae.cfg, ar).to(images.device)


def with_latent_scale(recipe: Recipe, source) -> Recipe:
    """Gaussian latents without ``ar.latent_scale``: 1 / their standard deviation, measured
    on the cache (as MAR measured its 0.2325 on ImageNet)."""
    if recipe.vae.posterior != "gaussian" or recipe.ar.latent_scale is not None:
        return recipe
    if not isinstance(source, LatentDataset):
        raise RecipeError(
            'Gaussian latents with train.inputs = "images": set ar.latent_scale (1 / the '
            "latents' standard deviation), or train on the latent cache to have it measured"
        )
    scale = 1.0 / source.latent_std(seed=recipe.run.seed)
    return dataclasses.replace(recipe, ar=dataclasses.replace(recipe.ar, latent_scale=scale))


def vae_path(recipe: Recipe) -> str:
    if not recipe.train.vae_checkpoint:
        raise TrainingError(
            "train.vae_checkpoint is empty: set it to the S-VAE that encoded the data "
            "(a train-vae export folder or the authors' vae.pt)"
        )
    return recipe.train.vae_checkpoint


def _source(recipe: Recipe) -> PreparedImages | LatentDataset:
    if recipe.train.inputs == "images":
        return PreparedImages(recipe.data.prepared)
    vae = vae_path(recipe)
    source = LatentDataset(recipe.data.latents)
    cached = source.manifest["settings"]
    if cached["vae_sha256"] != file_fingerprint(vae):
        raise TrainingError(
            f"{recipe.data.latents} was cached with another VAE than train.vae_checkpoint "
            f"({recipe.train.vae_checkpoint}); rerun cache-latents with it or point to its cache"
        )
    if cached["views"] != view_names(recipe):
        raise TrainingError(
            f"{recipe.data.latents} holds the views {cached['views']}, but this recipe's "
            f"augment.hflip = {str(recipe.augment.hflip).lower()} and cache.random_crops = "
            f"{recipe.cache.random_crops} ask for {view_names(recipe)}; rerun cache-latents "
            "into another data.latents (or delete this one)"
        )
    return source


def _data_classes(recipe: Recipe, source) -> tuple[list[str], str]:
    """The training data's class names, and the file they were read from."""
    if isinstance(source, PreparedImages):
        return source.info["class_names"], f"{recipe.data.prepared}/info.json"
    if "class_names" in source.manifest:
        return source.manifest["class_names"], f"{recipe.data.latents}/manifest.json"
    # a cache from before manifests recorded the classes: the data it was made from
    return read_info(recipe.data.prepared)["class_names"], f"{recipe.data.prepared}/info.json"


def with_data_classes(recipe: Recipe, names: list[str], where: str) -> Recipe:
    """``recipe`` with ``ar.num_classes`` and ``ar.class_names`` taken from the data
    (``where`` names the file); a recipe value that disagrees is refused."""
    ar = recipe.ar
    if ar.num_classes is not None and ar.num_classes != len(names):
        raise RecipeError(
            f"ar.num_classes = {ar.num_classes} in the recipe, but the data has {len(names)} "
            f"classes ({where}); remove ar.num_classes to take the data's, or point "
            "data.prepared/data.latents at the data you meant"
        )
    if ar.class_names and list(ar.class_names) != names:
        raise RecipeError(
            f"ar.class_names in the recipe ({', '.join(ar.class_names[:3])}, ...) are not the "
            f"data's ({', '.join(names[:3])}, ...; {where}); remove ar.class_names to take the "
            "data's"
        )
    classes = {"num_classes": len(names), "class_names": tuple(names)}
    return dataclasses.replace(recipe, ar=dataclasses.replace(ar, **classes))


def check_labels(labels: np.ndarray, num_classes: int, where: str) -> None:
    """Every label indexes a class: label ``num_classes`` is the model's null (unconditional)
    class, and larger ones would crash the class embedding mid-run."""
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        raise TrainingError(
            f"{where}: {int(bad.sum())} labels lie outside 0..{num_classes - 1} (e.g. "
            f"{int(labels[bad][0])}) for its {num_classes} classes; prepare the data again "
            "with `spherear prepare-data`"
        )
