"""The Accelerate session of a training run: devices, precision, sharding, trackers, grids."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from spherear.config import Recipe, TrainConfig, recipe_to_dict


def make_accelerator(cfg: TrainConfig, run_dir: Path):
    """DDP by default (or FSDP with ``train.fsdp``), bf16 autocast on CUDA, gloo on CPU;
    TensorBoard (or wandb) tracking through Accelerate."""
    from accelerate import Accelerator, FullyShardedDataParallelPlugin

    from spherear.train.loop import TrainingError

    cuda = torch.cuda.is_available()
    tracker = None if cfg.log_with == "none" else cfg.log_with
    if tracker and importlib.util.find_spec(tracker) is None:
        raise TrainingError(
            f"train.log_with = {tracker!r} but the {tracker} package is not installed; "
            f"pip install {tracker}, or set train.log_with = 'none'"
        )
    return Accelerator(
        cpu=not cuda,
        mixed_precision=cfg.mixed_precision if cuda else "no",
        log_with=tracker,
        project_dir=str(run_dir),
        fsdp_plugin=FullyShardedDataParallelPlugin() if cfg.fsdp else None,
    )


def trackers(accelerator, recipe: Recipe) -> None:
    """TensorBoard logs under run_dir, with the recipe as flat hyperparameters."""
    flat = {
        f"{section}.{key}": value if isinstance(value, int | float | str | bool) else str(value)
        for section, table in recipe_to_dict(recipe).items()
        for key, value in table.items()
    }
    accelerator.init_trackers(recipe.run.name, config=flat)


def fused_optimizers(accelerator) -> bool:
    """Fused AdamW, except where FSDP or DeepSpeed shard or wrap the parameters: whether
    set by the recipe or by ``accelerate config``, we have not tested them with it."""
    from accelerate.utils import DistributedType

    return accelerator.distributed_type not in (DistributedType.FSDP, DistributedType.DEEPSPEED)


def save_grid(images: torch.Tensor, path: Path, nrow: int) -> None:
    """RGB images (N, 3, H, W) in [-1, 1] -> one PNG grid of ``nrow`` images a row with
    2-pixel black gutters: torchvision's layout and rounding (for N >= 2), without importing
    torchvision, which costs 4 s a command on a CPU. The file appears only when whole."""
    from PIL import Image

    from spherear.files import atomic_write

    pad = 2
    pixels = (((images.detach().float().cpu() + 1) / 2).clamp(0, 1) * 255 + 0.5).to(torch.uint8)
    n, c, h, w = pixels.shape
    cols = min(nrow, n)
    rows = -(-n // cols)
    grid = torch.zeros(rows * (h + pad) + pad, cols * (w + pad) + pad, c, dtype=torch.uint8)
    for i, image in enumerate(pixels):
        y, x = pad + (i // cols) * (h + pad), pad + (i % cols) * (w + pad)
        grid[y : y + h, x : x + w] = image.permute(1, 2, 0)
    atomic_write(path, lambda tmp: Image.fromarray(grid.numpy()).save(tmp, format="PNG"), "grid")


def check_resume(recipe: Recipe, run_dir: Path) -> None:
    """Before any work: the run folder can be written, holds no pickle, and continues only
    the architecture it was started with."""
    from spherear.config import load_recipe, recipe_to_dict
    from spherear.files import check_output
    from spherear.models.registry import spell_out
    from spherear.train.loop import TrainingError
    from spherear.train.state import refuse_pickles

    check_output(run_dir, "run.output_dir")
    refuse_pickles(run_dir)
    saved_path = run_dir / "recipe.toml"
    if not saved_path.is_file():
        return
    saved = load_recipe(saved_path)

    def arch(r: Recipe) -> dict:
        spelled = recipe_to_dict(spell_out(r))
        return {f"{section}.{k}": v for section in ("vae", "ar")
                for k, v in spelled.get(section, {}).items()}  # fmt: skip

    if arch(saved) != arch(recipe):
        theirs, ours = arch(saved), arch(recipe)
        differ = [k for k in {**theirs, **ours} if theirs.get(k) != ours.get(k)]
        listed = ", ".join(f"{k} {theirs.get(k)} there, {ours.get(k)} here" for k in differ[:4])
        raise TrainingError(
            f"{run_dir} holds a run of another architecture ({listed}); use another "
            "run.output_dir, or the run's own recipe to continue it"
        )
