"""train-vae: the S-VAE with L1 + LPIPS + PatchGAN (hinge, from ``disc_start``) +
KL to the uniform distribution on the sphere; two optimisers.

``held_out_count`` images of the prepared dataset, a seeded class-stratified choice
(``spherear.data.splits``), never enter training: PSNR is reported on their centre crops,
a grid shows the first ``GRID`` of them (as many classes as there are, up to ``GRID``), and
``held_out.json`` in the run folder lists them and counts them per class.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import torch

from spherear.checkpoints import save_pretrained
from spherear.config import Recipe, RecipeError, VAEConfig
from spherear.data.prepare import PreparedImages
from spherear.data.splits import class_counts, held_out_split
from spherear.data.transforms import center_crop, to_tensor, train_view
from spherear.models import build_vae
from spherear.train.curves import plot_curves
from spherear.train.loop import (
    BatchPlan,
    Checkpoints,
    Counter,
    MetricsLog,
    StepBatches,
    adamw,
    check_finite,
    oom_message,
    resume,
    set_lr,
    steps_per_epoch,
    total_steps,
)
from spherear.train.losses import (
    PatchDiscriminator,
    hinge_d_loss,
    hinge_g_loss,
    perceptual_loss,
)
from spherear.train.session import (
    check_resume,
    fused_optimizers,
    make_accelerator,
    record_run,
    save_grid,
    trackers,
)

GRID = 8
MAX_HELD_OUT = 100  # a tenth of the data up to this: enough images for a stable PSNR
CODE_IMAGES = 2000  # fit the initial patch code (vae_loss.initial_code) to this many


def held_out_count(num_images: int) -> int:
    return max(GRID, min(MAX_HELD_OUT, num_images // 10))


class ImageBatches(StepBatches):
    """Augmented views of the training images ``train`` (indices into ``images``)."""

    def __init__(self, recipe: Recipe, images: PreparedImages, train: np.ndarray, plan: BatchPlan,
                 rank: int, first: int, last: int):  # fmt: skip
        super().__init__(len(train), plan, rank, first, last, recipe.run.seed)
        self.recipe, self.images, self.train = recipe, images, train

    def sample(self, index: int, seed: int, epoch: float) -> torch.Tensor:
        aug = self.recipe.augment
        image, _ = self.images[int(self.train[index])]
        decay = (aug.crop_decay_start_epoch, aug.crop_decay_end_epoch)
        view = train_view(image, self.recipe.vae.resolution, epoch, np.random.default_rng(seed),
                          aug.random_crop_min, aug.hflip, decay)  # fmt: skip
        return to_tensor(view)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of images in [-1, 1], after quantising both to uint8 as saved images are."""

    def quantise(x):
        return (x.float() * 127.5 + 128).clamp(0, 255).floor()

    mse = (quantise(a) - quantise(b)).square().mean().item()
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def train_vae(recipe: Recipe, progress: bool = True) -> Path:
    """Train (or resume) ``recipe``'s S-VAE; returns the export folder."""
    from tqdm import tqdm

    cfg, loss_cfg = recipe.train, recipe.vae_loss
    if 0 < loss_cfg.initial_kappa <= 1:
        raise RecipeError(f"vae_loss.initial_kappa must be 0 (default init) or above 1, got "
                          f"{loss_cfg.initial_kappa}")  # fmt: skip
    if loss_cfg.initial_code == "pca":
        check_patch_code(recipe.vae)
    run_dir = Path(recipe.run.output_dir)
    check_resume(recipe, run_dir)
    accelerator = make_accelerator(cfg, run_dir)
    if accelerator.is_main_process:
        record_run(recipe, run_dir)
    plan = BatchPlan.make(cfg, accelerator.num_processes)
    images = PreparedImages(recipe.data.prepared)
    labels = images.labels()
    train, held = held_out_split(labels, held_out_count(len(images)), recipe.run.seed)
    if accelerator.is_main_process:
        _write_held_out(run_dir, held, class_counts(labels[held], images.info["class_names"]))
    per_epoch = steps_per_epoch(len(train), plan.global_batch)
    total = total_steps(cfg, per_epoch)

    torch.manual_seed(recipe.run.seed)
    vae, disc = build_vae(recipe), PatchDiscriminator(loss_cfg.disc_layers, loss_cfg.disc_channels)
    if loss_cfg.initial_kappa:
        vae.init_kappa(loss_cfg.initial_kappa)
    if loss_cfg.initial_code == "pca":
        vae.init_patch_code(_code_images(images, train, recipe))
    # weight 0 (the tiny recipe) needs no VGG weights at all
    lpips = perceptual_loss(loss_cfg).to(accelerator.device) if loss_cfg.perceptual_weight else None
    fused = fused_optimizers(accelerator)
    opt, opt_d = adamw(vae, cfg, fused=fused), adamw(disc, cfg, fused=fused)
    counter = Counter()
    vae, disc, opt, opt_d = accelerator.prepare(vae, disc, opt, opt_d)
    accelerator.register_for_checkpointing(counter)
    checkpoints = Checkpoints(run_dir, cfg.keep_checkpoints)
    log = MetricsLog(run_dir, accelerator.is_main_process)
    resume(accelerator, checkpoints)
    log.truncate_after(counter.step)
    trackers(accelerator, recipe)
    held_out = torch.stack([
        to_tensor(center_crop(images[int(i)][0], recipe.vae.resolution)) for i in held
    ]).to(accelerator.device)  # fmt: skip

    batches = ImageBatches(recipe, images, train, plan, accelerator.process_index,
                           counter.step, total)  # fmt: skip
    # its own generator: making the iterator must not consume the global RNG (saved and
    # restored with checkpoints, it drives the posterior samples)
    loader = torch.utils.data.DataLoader(batches, batch_size=None, num_workers=cfg.num_workers,
                                         generator=torch.Generator())  # fmt: skip
    bar = tqdm(total=total, initial=counter.step, unit="step", desc="train-vae",
               disable=not (progress and accelerator.is_main_process))  # fmt: skip
    sums: dict[str, float] = {}
    for k, x in enumerate(loader):
        x = x.to(accelerator.device)
        micro = k % plan.accumulation
        last_micro = micro == plan.accumulation - 1
        adversarial = counter.step >= loss_cfg.disc_start
        sync = contextlib.nullcontext() if last_micro else accelerator.no_sync(vae)
        try:
            with sync, accelerator.autocast():
                recon, posterior = vae(x)
                parts = {
                    "l1": (recon.float() - x).abs().mean(),
                    "kl": posterior.kl().mean(),
                }
                if lpips is not None:
                    parts["lpips"] = lpips(recon.float(), x).mean()
                parts["g"] = hinge_g_loss(disc(recon)) if adversarial else torch.zeros(())
                weights = {"l1": loss_cfg.l1_weight, "lpips": loss_cfg.perceptual_weight,
                           "kl": loss_cfg.kl_weight, "g": loss_cfg.disc_weight}  # fmt: skip
                loss = sum(w * parts[name] for name, w in weights.items() if name in parts)
                accelerator.backward(loss / plan.accumulation)
            if adversarial:
                with (contextlib.nullcontext() if last_micro else accelerator.no_sync(disc)), \
                        accelerator.autocast():  # fmt: skip
                    d_loss = hinge_d_loss(disc(x), disc(recon.detach()))
                    accelerator.backward(d_loss / plan.accumulation)
                parts["d"] = d_loss
        except torch.cuda.OutOfMemoryError as e:
            raise oom_message(e, plan, cfg) from None
        parts["loss"] = loss
        for name, v in parts.items():
            sums[name] = sums.get(name, 0.0) + v.detach().float() / plan.accumulation
        if not last_micro:
            continue
        record = {name: accelerator.reduce(v.to(accelerator.device), "mean").item()
                  for name, v in sums.items()}  # fmt: skip
        sums = {}
        check_finite(record["loss"], counter.step + 1, checkpoints, cfg)
        lr = set_lr([opt, opt_d], cfg, counter.step, total)
        accelerator.clip_grad_norm_(vae.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if adversarial:
            accelerator.clip_grad_norm_(disc.parameters(), cfg.grad_clip)
            opt_d.step()
            opt_d.zero_grad(set_to_none=True)
        counter.step += 1
        bar.update(1)
        bar.set_postfix(l1=f"{record['l1']:.4f}", loss=f"{record['loss']:.4f}")
        if counter.step % cfg.log_every == 0 or counter.step == total:
            record = {"step": counter.step, **record, "lr": lr}
            log.write(record)
            accelerator.log(record, step=counter.step)
        if counter.step % cfg.checkpoint_every == 0 or counter.step == total:
            checkpoints.save(accelerator, counter.step)
        if cfg.sample_every and counter.step % cfg.sample_every == 0 or counter.step == total:
            _report(accelerator, vae, held_out, run_dir, counter.step, log)
    bar.close()
    export = run_dir / "export"
    if accelerator.is_main_process:
        save_pretrained(export, recipe, accelerator.unwrap_model(vae).cpu())
        plot_curves(run_dir, ("loss", "l1", "lpips", "kl", "g", "d", "held_out_psnr"))
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return export


def check_patch_code(cfg: VAEConfig) -> None:
    """What ``vae_loss.initial_code = "pca"`` needs of the architecture, as one-line errors."""
    p = cfg.patch_size
    if not cfg.patch_shortcut:
        raise RecipeError('vae_loss.initial_code = "pca" fits the patch shortcut: set '
                          'vae.patch_shortcut = true (or initial_code = "random")')  # fmt: skip
    if cfg.latent_dim - 1 > 3 * p * p:
        raise RecipeError(
            f'vae_loss.initial_code = "pca": vae.latent_dim {cfg.latent_dim} is more than one '
            f"above the {3 * p * p} numbers of a {p}x{p} RGB patch; lower vae.latent_dim"
        )
    if cfg.latent_dim > cfg.width:
        raise RecipeError(
            f'vae_loss.initial_code = "pca": vae.latent_dim {cfg.latent_dim} exceeds the width '
            f"{cfg.width} (the last of vae.channels); lower vae.latent_dim or widen the VAE"
        )


def _code_images(images: PreparedImages, train: np.ndarray, recipe: Recipe) -> torch.Tensor:
    """Centre crops of up to CODE_IMAGES training images (a seeded choice) for the initial
    patch code; never held-out ones."""
    rng = np.random.default_rng(recipe.run.seed)
    chosen = np.sort(rng.permutation(train)[:CODE_IMAGES])
    size = recipe.vae.resolution
    return torch.stack([to_tensor(center_crop(images[int(i)][0], size)) for i in chosen])


def _write_held_out(run_dir: Path, held: np.ndarray, per_class: dict[str, int]) -> None:
    """Which images are held out (in grid order) and how many of each class."""
    out = run_dir / "held_out.json"
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps({"per_class": per_class, "indices": held.tolist()}, indent=1) + "\n")
    tmp.replace(out)


def _report(accelerator, vae, held_out, run_dir: Path, step: int, log: MetricsLog) -> None:
    """PSNR on the held-out images and a grid of the first ``GRID``: originals on top,
    reconstructions below."""
    if not accelerator.is_main_process:
        return
    model = accelerator.unwrap_model(vae)
    model.eval()
    with torch.no_grad(), accelerator.autocast():
        recon = torch.cat([model.decode(model.encode(x).mode()).float().clamp(-1, 1)
                           for x in held_out.split(GRID)])  # fmt: skip
    model.train()
    value = psnr(recon, held_out)
    log.write({"step": step, "held_out_psnr": value})
    accelerator.log({"held_out_psnr": value}, step=step)
    save_grid(
        torch.cat([held_out[:GRID], recon[:GRID]]),
        run_dir / "reconstructions" / f"step-{step:08d}.png",
        nrow=GRID,
    )
