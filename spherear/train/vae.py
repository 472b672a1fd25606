"""train-vae: the S-VAE with L1 + LPIPS + PatchGAN (hinge, from ``disc_start``) + KL to the
uniform distribution on the sphere (to N(0, I), weighted by ``gaussian_kl_weight``, for a
Gaussian posterior); two optimisers.

What differs from train-ar: augmented views of the prepared images as inputs, the loss
above, the discriminator as a second part that trains from ``vae_loss.disc_start``, and a
report on held-out images (``spherear.train.held_out``). The rest is ``spherear.train.loop``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from spherear.checkpoints import save_pretrained
from spherear.config import Recipe, RecipeError, VAELossConfig
from spherear.data.prepare import PreparedImages
from spherear.data.splits import class_counts, held_out_split
from spherear.data.transforms import to_tensor, train_view
from spherear.folder_lock import hold
from spherear.models import build_vae
from spherear.models.vae import check_patch_code
from spherear.train.batches import BatchPlan, StepBatches
from spherear.train.held_out import HeldOut, held_out_count, write_held_out
from spherear.train.loop import Loop
from spherear.train.losses import (
    PatchDiscriminator,
    hinge_d_loss,
    hinge_g_loss,
    perceptual_loss,
    vgg_features,
)
from spherear.train.optim import adamw
from spherear.train.patch_code import code_images
from spherear.train.session import check_run_dir
from spherear.train.state import Part

CURVES = ("loss", "l1", "lpips", "kl", "g", "d", "held_out_psnr")


class ImageBatches(StepBatches):
    """Augmented views of the training images ``train`` (indices into ``images``)."""

    def __init__(self, recipe: Recipe, images: PreparedImages, train: np.ndarray, plan: BatchPlan,
                 rank: int, first: int, last: int):  # fmt: skip
        super().__init__(len(train), plan, rank, first, last, recipe.run.seed)
        self.recipe, self.images, self.train = recipe, images, train

    def example(self, index: int, seed: int, epoch: float) -> torch.Tensor:
        aug = self.recipe.augment
        image, _ = self.images[int(self.train[index])]
        decay = (aug.crop_decay_start_epoch, aug.crop_decay_end_epoch)
        view = train_view(image, self.recipe.vae.resolution, epoch, np.random.default_rng(seed),
                          aug.random_crop_min, aug.hflip, decay)  # fmt: skip
        return to_tensor(view)


def train_vae(recipe: Recipe, progress: bool = True, allow_changes: bool = False) -> Path:
    """Train (or resume) ``recipe``'s S-VAE (``[vae_loss]`` defaults if it has none), one
    command per run folder at a time; ``allow_changes``: resume with other settings
    (recorded); returns the export folder."""
    with hold(check_run_dir(recipe, [recipe.data.prepared]), "train-vae"):
        return _train_vae(recipe, progress, allow_changes)


def _train_vae(recipe: Recipe, progress: bool, allow_changes: bool) -> Path:
    recipe = dataclasses.replace(recipe, vae_loss=recipe.vae_loss or VAELossConfig())
    cfg, loss_cfg = recipe.train, recipe.vae_loss
    if 0 < loss_cfg.initial_kappa <= 1:
        raise RecipeError(f"vae_loss.initial_kappa must be 0 (default init) or above 1, got "
                          f"{loss_cfg.initial_kappa}")  # fmt: skip
    if loss_cfg.initial_code == "pca":
        check_patch_code(recipe.vae)
    if cfg.fsdp:
        raise RecipeError("train.fsdp shards train-ar's model only; the S-VAE trains with DDP: "
                          "set train.fsdp = false for train-vae")  # fmt: skip
    images = PreparedImages(recipe.data.prepared)
    # weight 0 (the tiny recipe) needs no VGG weights at all; bad ones stop before any work
    vgg = vgg_features(loss_cfg) if loss_cfg.perceptual_weight else None
    labels = images.labels()
    if held_out_count(len(images)) >= len(images):
        raise RecipeError(
            f"{recipe.data.prepared}: {len(images)} images, but train-vae holds "
            f"{held_out_count(len(images))} out for its reconstruction grid and needs more to "
            "train on; prepare a larger dataset"
        )
    train, held = held_out_split(labels, held_out_count(len(images)), recipe.run.seed)
    loop = Loop(recipe, "train-vae", len(train), progress, allow_changes)
    accelerator = loop.accelerator
    if loop.main:
        write_held_out(loop.run_dir, held, class_counts(labels[held], images.info["class_names"]))

    vae, disc = build_vae(recipe), PatchDiscriminator(loss_cfg.disc_layers, loss_cfg.disc_channels)
    if loss_cfg.initial_kappa:
        vae.init_kappa(loss_cfg.initial_kappa)
    if loss_cfg.initial_std:
        vae.init_std(loss_cfg.initial_std)
    if loss_cfg.initial_code == "pca":
        vae.init_patch_code(code_images(images, train, recipe))
    # built here, after the seed: its random backbone (tests) draws from the global RNG
    lpips = perceptual_loss(vgg).to(accelerator.device) if loss_cfg.perceptual_weight else None
    opt, opt_d = adamw(vae, cfg, fused=loop.fused), adamw(disc, cfg, fused=loop.fused)
    vae, disc, opt, opt_d = accelerator.prepare(vae, disc, opt, opt_d)
    first = loop.resume({"model": Part(vae, opt),
                         "discriminator": Part(disc, opt_d, loss_cfg.disc_start)})  # fmt: skip
    held_out = HeldOut(images, held, recipe.vae.resolution, accelerator.device)
    gaussian = recipe.vae.posterior == "gaussian"
    kl_weight = loss_cfg.gaussian_kl_weight if gaussian else loss_cfg.kl_weight
    weights = {"l1": loss_cfg.l1_weight, "lpips": loss_cfg.perceptual_weight,
               "kl": kl_weight, "g": loss_cfg.disc_weight}  # fmt: skip

    def forward(x: torch.Tensor, step: int):
        recon, posterior = vae(x)
        parts = {"l1": (recon.float() - x).abs().mean(), "kl": posterior.kl().mean()}
        if lpips is not None:
            parts["lpips"] = lpips(recon.float(), x).mean()
        adversarial = step >= loss_cfg.disc_start
        parts["g"] = hinge_g_loss(disc(recon)) if adversarial else torch.zeros(())
        loss = sum(w * parts[name] for name, w in weights.items() if name in parts)
        if not adversarial:
            return [loss], {**parts, "loss": loss}
        d_loss = hinge_d_loss(disc(x), disc(recon.detach()))
        return [loss, d_loss], {**parts, "d": d_loss, "loss": loss}

    def report(step: int) -> None:
        held_out.report(accelerator, vae, loop.run_dir, step, loop.log)

    loop.run(ImageBatches(recipe, images, train, loop.plan, accelerator.process_index, first,
                          loop.total), forward, report)  # fmt: skip

    def save(out: Path) -> None:
        save_pretrained(out, recipe, accelerator.unwrap_model(vae).cpu())

    return loop.export(save, CURVES)
