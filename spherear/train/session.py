"""The Accelerate session of a training run (devices, precision, sharding, trackers) and
what its run folder records: the recipe, the RoPE rule, which runs may continue in it."""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

from spherear.accelerator import make_accelerator
from spherear.checkpoint_header import ROPE_CONVENTION
from spherear.config import Recipe, TrainConfig, load_recipe, recipe_to_dict, save_recipe
from spherear.files import check_output, differences, write_json
from spherear.folder_kinds import RUN, check_output_folder
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


# Settings that shape what a run learns; a resume with others changes the run midway (the
# schedule, the batches, the random stream), so it needs --allow-changes. Left out: what
# only says how long to train or how to log, checkpoint and compute the same thing.
FREE_TO_CHANGE = {
    "run.name", "run.output_dir", "train.max_steps", "train.epochs", "train.log_every",
    "train.checkpoint_every", "train.keep_checkpoints", "train.sample_every", "train.log_with",
    "train.num_workers", "train.compile", "train.grad_checkpointing", "train.micro_batch_size",
}  # fmt: skip
TRAINING_SECTIONS = ("run", "train", "vae_loss", "augment")


def check_run_dir(recipe: Recipe, inputs: list[str] = ()) -> Path:
    """``run.output_dir``, checked before any work (and before its lock is taken): not
    empty, not one of the run's ``inputs``, not a folder of another kind nor inside one."""
    check_output_folder(recipe.run.output_dir, RUN, "run.output_dir", inputs)
    return Path(recipe.run.output_dir)


def record_run(recipe: Recipe, run_dir: Path, changes: str = "", precision: str = "fp32") -> None:
    """Write the run's recipe (architecture spelled out) and RUN_RECORD into ``run_dir``:
    the RoPE rule, the ``precision`` the run computes in ("fp32" or "bf16"), and the
    ``changes`` (settings a resume changed with --allow-changes) added to its history."""
    save_recipe(spell_out(recipe), run_dir)
    record = _run_record(run_dir)
    history = record.get("allowed_changes", []) if isinstance(record, dict) else []
    if changes:
        history.append({"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "changes": changes})
    record = {"rope": ROPE_CONVENTION, "precision": precision,
              **({"allowed_changes": history} if history else {})}  # fmt: skip
    write_json(run_dir / RUN_RECORD, record, "run-record")


def _run_record(run_dir: Path) -> dict:
    try:
        record = json.loads((run_dir / RUN_RECORD).read_text())
    except (OSError, ValueError, RecursionError):
        return {}
    return record if isinstance(record, dict) else {}


def _rope_of(run_dir: Path) -> str | None:
    return _run_record(run_dir).get("rope")


def _training_settings(recipe: Recipe) -> dict:
    spelled = recipe_to_dict(spell_out(recipe))
    return {f"{section}.{k}": v for section in TRAINING_SECTIONS
            for k, v in spelled.get(section, {}).items()
            if f"{section}.{k}" not in FREE_TO_CHANGE}  # fmt: skip


def check_resume(recipe: Recipe, run_dir: Path, allow_changes: bool = False) -> str:
    """Before any work: the run folder can be written, holds no pickle, and continues only
    the architecture (and RoPE rule) it was started with, and only with the settings it
    was trained with unless ``allow_changes``; returns the changes so allowed."""
    check_output(run_dir, "run.output_dir")
    refuse_pickles(run_dir)
    saved_path = run_dir / "recipe.toml"
    if not saved_path.is_file():
        return ""
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
    changes = differences(_training_settings(saved), _training_settings(recipe), now_word="here")
    if changes and trained and not allow_changes:
        raise TrainingError(
            f"{run_dir} was trained with other settings ({changes}); continue it with its own "
            f"recipe ({saved_path}), use another run.output_dir, or pass --allow-changes to "
            "resume with these (recorded in its run.json)"
        )
    return changes if trained else ""
