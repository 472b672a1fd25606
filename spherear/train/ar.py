"""train-ar: the SphereAR transformer and head on latents of a frozen S-VAE.

What differs from train-vae: the inputs (the latent cache, or images encoded on the fly as
the authors did with ``train.inputs = "images"``; ``spherear.train.ar_inputs``), the flow
loss of the model itself, an EMA of the weights (exported as ``ar.safetensors``, the raw
weights as ``ar_raw.safetensors``) and a grid of EMA samples as the report. The rest is
``spherear.train.loop``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from spherear.checkpoints import load_vae, save_pretrained
from spherear.config import Recipe, RecipeError
from spherear.files import note
from spherear.folder_lock import hold
from spherear.grids import save_grid
from spherear.models import build_ar
from spherear.train.ar_inputs import MicroBatches, encode, open_inputs, vae_path
from spherear.train.loop import Loop
from spherear.train.optim import EMA, adamw
from spherear.train.session import check_run_dir
from spherear.train.sharding import shard, whole_state
from spherear.train.state import Part

GRID_CLASSES, GRID_PER_CLASS = 8, 4
NO_DECAY = ("cls_embedding", "proj_in")


def train_ar(recipe: Recipe, progress: bool = True, allow_changes: bool = False) -> Path:
    """Train (or resume) ``recipe``'s AR model, one command per run folder at a time;
    ``allow_changes``: resume with other settings (recorded); returns the export folder."""
    if recipe.ar is None:
        raise RecipeError("the recipe has no [ar] section; train-ar needs an AR recipe")
    inputs = [recipe.data.prepared, recipe.train.vae_checkpoint]
    if recipe.train.inputs == "latents":
        inputs.append(recipe.data.latents)
    with hold(check_run_dir(recipe, inputs), "train-ar"):
        return _train_ar(recipe, progress, allow_changes)


def _train_ar(recipe: Recipe, progress: bool, allow_changes: bool) -> Path:
    # the data, the S-VAE and the recipe are checked against each other before any work
    source, recipe = open_inputs(recipe)
    vae = load_vae(vae_path(recipe), recipe.vae).vae.eval().requires_grad_(False)
    loop = Loop(recipe, "train-ar", len(source), progress, allow_changes)
    cfg, accelerator = recipe.train, loop.accelerator
    vae.to(accelerator.device)

    ar = build_ar(recipe).to(accelerator.device)
    ar.grad_checkpointing = cfg.grad_checkpointing
    ema = EMA(ar, cfg.ema_decay)  # on the device, before sharding: whole
    if cfg.fsdp:  # sharded by spherear, not wrapped by Accelerate (spherear.train.sharding)
        prepared = shard(ar, [*ar.layers, ar.head], accelerator.device,
                         accelerator.num_processes)  # fmt: skip
        optimizer = accelerator.prepare(adamw(prepared, cfg, NO_DECAY, loop.fused))
        if loop.main:
            note(f"train.fsdp: the model is sharded over {accelerator.num_processes} "
                 "process(es) with torch's fully_shard")  # fmt: skip
    else:
        optimizer = adamw(ar, cfg, NO_DECAY, loop.fused)
        prepared, optimizer = accelerator.prepare(ar, optimizer)
    model = torch.compile(prepared) if cfg.compile else prepared
    first = loop.resume({"model": Part(prepared, optimizer)}, ema)

    def forward(batch: dict, step: int):
        x = batch["x"]
        tokens = x if x.ndim == 3 else encode(vae, x, batch["seed"], recipe.ar)
        loss = model(tokens, batch["label"], batch["drop"], batch["t"], batch["noise"])
        return [loss], {"loss": loss}

    def grid(step: int) -> None:
        path = loop.run_dir / "samples" / f"step-{step:08d}.png"
        sample_grid(recipe, accelerator, ema, vae, path)

    batches = MicroBatches(recipe, source, loop.plan, accelerator.process_index, first, loop.total)
    loop.run(batches, forward, grid)
    raw = whole_state(accelerator.unwrap_model(prepared))  # every process gathers its shards

    def save(out: Path) -> None:
        save_pretrained(out, recipe, vae.cpu(), ema.full_state(raw), raw)

    return loop.export(save, ("loss", "lr", "grad_norm"))


def sample_grid(recipe: Recipe, accelerator, ema: EMA, vae, path: Path) -> None:
    """Class-conditional samples of the EMA weights, ``GRID_PER_CLASS`` for each of the
    first ``GRID_CLASSES`` classes, one class a row. The model is built on the meta device
    (no draws from the random generators, which checkpoints restore) and takes the whole
    EMA weights, so this runs on one process whether training shards the model or not."""
    with torch.device("meta"):
        ema_model = build_ar(recipe)
    ema_model.load_state_dict({k: v.clone() for k, v in ema.shadow.items()}, assign=True)
    ema_model.reset_buffers()
    ema_model.eval()
    classes = min(GRID_CLASSES, recipe.ar.num_classes)
    labels = torch.arange(classes, device=accelerator.device).repeat_interleave(GRID_PER_CLASS)
    names = recipe.ar.class_names or [f"class {c}" for c in range(classes)]
    generator = torch.Generator(accelerator.device).manual_seed(recipe.run.seed)
    with accelerator.autocast():
        tokens = ema_model.sample(labels, recipe.sample, generator)
        images = vae.to(accelerator.device).decode(ema_model.to_latents(tokens)).float()
    save_grid(images, path, nrow=GRID_PER_CLASS, row_labels=names[:classes])
