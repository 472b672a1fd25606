"""The Accelerate session of a training run (devices, precision, sharding, trackers) and
what its run folder records: the recipe, the RoPE rule, which runs may continue in it."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from spherear.accelerator import make_accelerator
from spherear.checkpoint_header import ROPE_CONVENTION
from spherear.config import Recipe, TrainConfig, load_recipe, recipe_to_dict, save_recipe
from spherear.files import check_output, differences, write_json
from spherear.models.registry import spell_out
from spherear.train import TrainingError
from spherear.train.state import refuse_pickles

# Beside recipe.toml: what the run's weights depend on beyond the recipe. The AR model's RoPE
# table is not saved in its checkpoints, so a run started under another rule must not go on.
RUN_RECORD = "run.json"


def training_accelerator(cfg: TrainConfig, run_dir: Path):
    """DDP by default (or FSDP with ``train.fsdp``), bf16 autocast with
    ``train.mixed_precision = "bf16"`` (CUDA or CPU), gloo on CPU;
    TensorBoard (or wandb) tracking through Accelerate."""
    tracker = None if cfg.log_with == "none" else cfg.log_with
    if tracker and importlib.util.find_spec(tracker) is None:
        raise TrainingError(
            f"train.log_with = {tracker!r} but the {tracker} package is not installed; "
            f"pip install {tracker}, or set train.log_with = 'none'"
        )
    return make_accelerator(cfg.mixed_precision, tracker, str(run_dir))


def trackers(accelerator, recipe: Recipe) -> None:
    """TensorBoard logs under run_dir, with the recipe as flat hyperparameters."""
    flat = {
        f"{section}.{key}": value if isinstance(value, int | float | str | bool) else str(value)
        for section, table in recipe_to_dict(recipe).items()
        for key, value in table.items()
    }
    accelerator.init_trackers(recipe.run.name, config=flat)


def fused_optimizers(accelerator, cfg: TrainConfig) -> bool:
    """Fused AdamW, except over sharded parameters (``train.fsdp``, or FSDP and DeepSpeed
    set by ``accelerate config``): we have not tested it with them."""
    from accelerate.utils import DistributedType

    sharded = (DistributedType.FSDP, DistributedType.DEEPSPEED)
    return not cfg.fsdp and accelerator.distributed_type not in sharded


def record_run(recipe: Recipe, run_dir: Path, precision: str = "fp32") -> None:
    """Write the run's recipe (architecture spelled out) and RUN_RECORD into ``run_dir``:
    the RoPE rule and the ``precision`` the run computes in ("fp32" or "bf16")."""
    save_recipe(spell_out(recipe), run_dir)
    record = {"rope": ROPE_CONVENTION, "precision": precision}
    write_json(run_dir / RUN_RECORD, record, "run-record")


def _rope_of(run_dir: Path) -> str | None:
    try:
        return json.loads((run_dir / RUN_RECORD).read_text()).get("rope")
    except (OSError, ValueError, AttributeError):
        return None


def check_resume(recipe: Recipe, run_dir: Path) -> None:
    """Before any work: the run folder can be written, holds no pickle, and continues only
    the architecture (and RoPE rule) it was started with."""
    check_output(run_dir, "run.output_dir")
    refuse_pickles(run_dir)
    saved_path = run_dir / "recipe.toml"
    if not saved_path.is_file():
        return
    saved = load_recipe(saved_path)
    trained = any((run_dir / "checkpoints").glob("step-*")) or (run_dir / "export").is_dir()
    if recipe.ar is not None and trained and _rope_of(run_dir) != ROPE_CONVENTION:
        raise TrainingError(
            f"{run_dir}: trained by an earlier spherear with another 2D RoPE table (its "
            f"{RUN_RECORD} does not say rope '{ROPE_CONVENTION}'), so its weights cannot go on "
            f"under this version; delete {run_dir} or set another run.output_dir to retrain"
        )

    def arch(r: Recipe) -> dict:
        # class names label the classes, they are not weights: runs from before train-ar
        # recorded them resume
        spelled = recipe_to_dict(spell_out(r))
        return {f"{section}.{k}": v for section in ("vae", "ar")
                for k, v in spelled.get(section, {}).items() if k != "class_names"}  # fmt: skip

    differ = differences(arch(saved), arch(recipe), now_word="here")
    if differ:
        raise TrainingError(
            f"{run_dir} holds a run of another architecture ({differ}); use another "
            "run.output_dir, or the run's own recipe to continue it"
        )
