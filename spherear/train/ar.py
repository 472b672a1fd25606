"""train-ar: the SphereAR transformer and head on latents of a frozen S-VAE.

Inputs come from the latent cache (default) or from images encoded on the fly (the
authors' way, ``train.inputs = "images"``). Either way each visit of an image draws a fresh
posterior sample, and every random draw of a sample is seeded by (seed, step, position in
the global batch); see ``spherear.train.loop``.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
from pathlib import Path

import numpy as np
import torch

from spherear.checkpoints import Loaded, load_vae, save_pretrained
from spherear.config import Recipe, RecipeError
from spherear.data.latent_cache import LatentDataset, file_fingerprint, view_names
from spherear.data.prepare import PreparedImages, read_info
from spherear.data.transforms import to_tensor, train_view
from spherear.files import note
from spherear.models import build_ar
from spherear.models.power_spherical import PowerSpherical
from spherear.train.curves import plot_curves
from spherear.train.loop import (
    EMA,
    BatchPlan,
    MetricsLog,
    StepBatches,
    StopRequests,
    TrainingError,
    adamw,
    check_finite,
    ignore_stop_signals,
    oom_message,
    set_lr,
    steps_per_epoch,
    total_steps,
    weights_checksum,
)
from spherear.train.session import (
    check_resume,
    fused_optimizers,
    make_accelerator,
    record_run,
    save_grid,
    trackers,
)
from spherear.train.state import Checkpoints, Part


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
            x, labels = self.source.draw_batch(indices, generators)
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


def _encode(vae, images: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
    """On-the-fly inputs: posterior samples drawn from each image's own seed."""
    with torch.no_grad():
        posterior = vae.encode(images)
    mu, kappa = posterior.mu.float().cpu(), posterior.kappa.float().cpu()
    generators = [torch.Generator().manual_seed(int(seed) + 1) for seed in seeds]
    samples = PowerSpherical(mu, kappa).sample(generators)
    return samples.to(images.device) * math.sqrt(mu.shape[-1])


def _vae_path(recipe: Recipe) -> str:
    if not recipe.train.vae_checkpoint:
        raise TrainingError(
            "train.vae_checkpoint is empty: set it to the S-VAE that encoded the data "
            "(a train-vae export folder or the authors' vae.pt)"
        )
    return recipe.train.vae_checkpoint


def _load_vae(recipe: Recipe) -> Loaded:
    return load_vae(_vae_path(recipe), recipe.vae)


def _source(recipe: Recipe):
    if recipe.train.inputs == "images":
        return PreparedImages(recipe.data.prepared)
    vae = _vae_path(recipe)
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


def train_ar(recipe: Recipe, progress: bool = True) -> Path:
    """Train (or resume) ``recipe``'s AR model; returns the export folder."""
    from tqdm import tqdm

    cfg = recipe.train
    run_dir = Path(recipe.run.output_dir)
    source = _source(recipe)  # a mismatched cache is refused before the run folder exists
    names, where = _data_classes(recipe, source)
    recipe = with_data_classes(recipe, names, where)
    check_labels(source.labels(), len(names), recipe.data.latents
                 if isinstance(source, LatentDataset) else recipe.data.prepared)  # fmt: skip
    check_resume(recipe, run_dir)
    accelerator = make_accelerator(cfg, run_dir)
    plan = BatchPlan.make(cfg, accelerator.num_processes)
    vae = _load_vae(recipe).vae.to(accelerator.device).eval().requires_grad_(False)
    per_epoch = steps_per_epoch(len(source), plan.global_batch)
    total = total_steps(cfg, per_epoch)
    main = accelerator.is_main_process
    if main:
        record_run(recipe, run_dir)

    torch.manual_seed(recipe.run.seed)  # the same initial weights on every process
    ar = build_ar(recipe)
    ar.grad_checkpointing = cfg.grad_checkpointing
    optimizer = adamw(ar, cfg, ("cls_embedding", "proj_in"), fused_optimizers(accelerator))
    ema = EMA(ar, cfg.ema_decay)
    prepared, optimizer = accelerator.prepare(ar, optimizer)
    model = torch.compile(prepared) if cfg.compile else prepared
    trained = {"model": Part(prepared, optimizer)}

    checkpoints = Checkpoints(run_dir, cfg.keep_checkpoints, accelerator)
    log = MetricsLog(run_dir, main)
    resumed = checkpoints.resume(trained, ema, say=note if main else lambda message: None)
    step = resumed.step if resumed else 0
    log.keep(resumed.metrics_lines if resumed else 0)
    trackers(accelerator, recipe)

    batches = MicroBatches(recipe, source, plan, accelerator.process_index, step, total)
    loader = torch.utils.data.DataLoader(batches, batch_size=None, num_workers=cfg.num_workers,
                                         generator=torch.Generator(),
                                         worker_init_fn=ignore_stop_signals)  # fmt: skip
    bar = tqdm(total=total, initial=step, unit="step", desc="train-ar",
               disable=not (progress and main))  # fmt: skip
    running = 0.0
    with StopRequests() as stop:
        for k, batch in enumerate(loader):
            micro = k % plan.accumulation
            batch = {key: v.to(accelerator.device) for key, v in batch.items()}
            x = batch["x"]
            tokens = x if x.ndim == 3 else _encode(vae, x, batch["seed"])
            last_micro = micro == plan.accumulation - 1
            try:
                with accelerator.no_sync(model) if not last_micro else contextlib.nullcontext():
                    with accelerator.autocast():
                        loss = model(tokens, batch["label"], batch["drop"], batch["t"],
                                     batch["noise"])  # fmt: skip
                    accelerator.backward(loss / plan.accumulation)
            except torch.cuda.OutOfMemoryError as e:
                raise oom_message(e, plan, cfg) from None
            running += loss.detach().float() / plan.accumulation
            if not last_micro:
                continue
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            step_loss = accelerator.reduce(running, "mean").item()
            running = 0.0
            check_finite(step_loss, step + 1, checkpoints, cfg)
            lr = set_lr([optimizer], cfg, step, total)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            ema.update(accelerator.unwrap_model(model))
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss:.4f}", lr=f"{lr:.2e}")
            if step % cfg.log_every == 0 or step == total:
                record = {"step": step, "loss": step_loss, "lr": lr,
                          "grad_norm": float(grad_norm)}  # fmt: skip
                log.write(record)
                accelerator.log(record, step=step)
            # the grid before the checkpoint: a run resumed from it must not miss the grid
            if cfg.sample_every and step % cfg.sample_every == 0:
                _sample_grid(recipe, accelerator, model, ema, vae, run_dir, step)
            due = step % cfg.checkpoint_every == 0 or step == total
            checkpoints.step_done(trained, ema, step, due, log, stop)
    bar.close()

    raw = accelerator.unwrap_model(model)
    sums = accelerator.gather(torch.tensor([weights_checksum(raw)], device=accelerator.device))
    log.write({"step": step, "weights_checksum_per_rank": sums.tolist()})
    export = run_dir / "export"
    if main:
        ema_state = ema.full_state(raw)
        save_pretrained(export, recipe, vae.cpu(), ema_state, raw.state_dict())
        plot_curves(run_dir, ("loss", "lr", "grad_norm"))
        _sample_grid(recipe, accelerator, model, ema, vae, run_dir, step)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return export


def _sample_grid(recipe, accelerator, model, ema, vae, run_dir: Path, step: int) -> None:
    """Class-conditional samples with the EMA weights: one row per class (up to 8)."""
    if not accelerator.is_main_process:
        return
    ema_model = copy.deepcopy(accelerator.unwrap_model(model)).eval()
    ema_model.load_state_dict(ema.full_state(ema_model))
    classes = min(8, recipe.ar.num_classes)
    labels = torch.arange(classes, device=accelerator.device).repeat_interleave(4)
    names = recipe.ar.class_names or [f"class {c}" for c in range(classes)]
    generator = torch.Generator(accelerator.device).manual_seed(recipe.run.seed)
    with accelerator.autocast():
        tokens = ema_model.sample(labels, recipe.sample, generator)
        images = vae.to(accelerator.device).decode(tokens).float()
    save_grid(images, run_dir / "samples" / f"step-{step:08d}.png", nrow=4,
              row_labels=names[:classes])  # fmt: skip
