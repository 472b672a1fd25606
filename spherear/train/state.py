"""Training state on disk, without pickle: what a checkpoint holds, how it is written so that
a kill at any instant leaves the previous checkpoints intact, and how a resume finds the
newest intact one.

    checkpoints/step-XXXXXXXX/
        model.safetensors                the model's weights (and discriminator.safetensors)
        model.optimizer.safetensors      its optimizer's state; the param groups, as JSON,
                                         in the safetensors metadata
        ema.safetensors                  the EMA weights (train-ar)
        rng.safetensors                  each process's torch random number generators
        state.json                       written last: the step, how many lines of
                                         metrics.jsonl it covers, the numerics (device,
                                         threads), each file's size and sha256

A checkpoint is written into a temporary folder and renamed when whole. Resuming checks
every file against ``state.json``; a damaged checkpoint is set aside as
``damaged-step-XXXXXXXX`` and the previous one is used. Nothing here unpickles, and a run
folder that holds a pickle (``*.pkl``, or the ``optimizer.bin`` of the Accelerate format
that spherear 0.1 wrote) is refused: reading one could run code.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from spherear import numerics
from spherear.files import (
    atomic_write,
    check_record,
    new_folder,
    note,
    publish,
    read_json,
    remove,
    sweep,
    write_json,
)
from spherear.train import TrainingError

FORMAT = "spherear-training-state"
VERSION = 1
PICKLES = {".pkl", ".pickle"}
TORCH_PICKLES = {".bin", ".pt", ".pth"}  # Accelerate's optimizer.bin and the like


def refuse_pickles(run_dir: Path) -> None:
    """Stop before reading anything if the run folder holds a pickle."""
    if not run_dir.is_dir():
        return
    for path in sorted(run_dir.rglob("*")):
        planted = path.suffix in PICKLES
        old_format = path.suffix in TORCH_PICKLES and "checkpoints" in path.parts
        if planted or old_format:
            raise TrainingError(
                f"{path}: a pickle in the run folder; spherear never reads training state from "
                "pickles (unpickling can run code): delete it. Checkpoints written by spherear "
                "0.1 (Accelerate's *.pkl and optimizer.bin) cannot be resumed: start the run "
                "in a new run.output_dir"
            )


@dataclass
class Part:
    """A model and the optimizer that trains it (none for a frozen one) from step ``start``
    on (the discriminator of train-vae starts late)."""

    model: torch.nn.Module  # DDP-wrapped by Accelerate or sharded (train.sharding); not compiled
    optimizer: torch.optim.Optimizer | None = None
    start: int = 0


@dataclass
class Resumed:
    step: int
    metrics_lines: int
    path: Path


def _raw(optimizer):
    return getattr(optimizer, "optimizer", optimizer)  # Accelerate's wrapper holds the real one


def _options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    # whole tensors on the CPU, under names without the DDP/FSDP wrappers' prefixes
    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def _flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    tensors, scalars = {}, {}
    for name, values in state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{name}/{key}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{name}/{key}"] = value
    # one metadata key: safetensors writes several in a random order, and the bytes of a
    # resumed run's checkpoints must equal an uninterrupted run's
    extra = {"param_groups": state["param_groups"], "scalars": scalars}
    return tensors, {"optimizer": json.dumps(extra)}


def _unflatten_optimizer(tensors: dict, metadata: dict, current: list[dict]) -> dict:
    extra = json.loads(metadata["optimizer"])
    state: dict[str, dict] = {}
    for flat, value in [*tensors.items(), *extra["scalars"].items()]:
        name, _, key = flat.rpartition("/")
        state.setdefault(name, {})[key] = value
    groups = extra["param_groups"]
    for group, now in zip(groups, current, strict=True):  # JSON turned tuples into lists
        for key, value in now.items():
            if isinstance(value, tuple) and isinstance(group.get(key), list):
                group[key] = tuple(group[key])
    return {"state": state, "param_groups": groups}


def _rng_states() -> dict[str, torch.Tensor]:
    states = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        states.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return states


def _set_rng_states(states: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(states["cpu"])
    cuda = [states[k] for k in sorted(states) if k.startswith("cuda")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


class TrainingState:
    """A run's resumable state, ``run/checkpoints/step-XXXXXXXX``: written whole or not at all
    by the main process; only the newest ``keep`` are kept. (Exports, the weights a run
    publishes, are ``spherear.checkpoints``.)"""

    def __init__(self, run_dir: Path, keep: int, accelerator):
        self.dir = run_dir / "checkpoints"
        self.keep = keep
        self.accelerator = accelerator

    def all(self) -> list[Path]:
        return sorted(self.dir.glob("step-*")) if self.dir.is_dir() else []

    def latest(self) -> Path | None:
        done = self.all()
        return done[-1] if done else None

    def _tensors(self, parts: dict[str, Part], ema) -> dict[str, tuple[dict, dict]]:
        """File name -> (tensors, metadata) on the main process (empty on the others); every
        process takes part, as FSDP gathers the shards."""
        from torch.distributed.checkpoint.state_dict import get_state_dict

        files = {}
        for name, part in parts.items():
            optimizers = [_raw(part.optimizer)] if part.optimizer is not None else []
            weights, optimizer_state = get_state_dict(part.model, optimizers, options=_options())
            if not self.accelerator.is_main_process:
                continue  # full state dicts on the CPU go to the first process only
            files[f"{name}.safetensors"] = (weights, {})
            if optimizers:
                files[f"{name}.optimizer.safetensors"] = _flatten_optimizer(optimizer_state)
        if ema is not None:
            files["ema.safetensors"] = (ema.shadow, {"decay": repr(ema.decay)})
        return files

    def save(self, parts: dict[str, Part], ema, step: int, metrics_lines: int) -> Path:
        from accelerate.utils import gather_object

        acc = self.accelerator
        final = self.dir / f"step-{step:08d}"
        files = self._tensors(parts, ema)
        rng = gather_object([_rng_states()])  # every process's generators, in rank order
        if acc.is_main_process:
            tmp = new_folder(final)
            rng_tensors = {f"rank{r}/{k}": v for r, s in enumerate(rng) for k, v in s.items()}
            files["rng.safetensors"] = (rng_tensors, {})
            records = {
                name: atomic_write(
                    tmp / name,
                    save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata),
                    "checkpoint/file",
                    record=True,
                )
                for name, (tensors, metadata) in files.items()
            }
            state = {
                "format": FORMAT,
                "version": VERSION,
                "step": step,
                "metrics_lines": metrics_lines,
                "numerics": numerics.describe(acc.device),
                "num_processes": acc.num_processes,
                "files": records,
            }
            write_json(tmp / "state.json", state, "checkpoint/state")
            publish(tmp, final, "checkpoint/publish")
            for old in self.all()[: -self.keep]:
                remove(old, "checkpoint/prune")
        acc.wait_for_everyone()
        return final

    def check(self, path: Path) -> str | None:
        """None if the checkpoint ``path`` is whole, else what is wrong with it."""
        try:
            state = json.loads((path / "state.json").read_bytes())
        except FileNotFoundError:
            return "state.json is missing"
        except (OSError, ValueError):
            return "state.json is unreadable"
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            return "state.json is not a spherear training state"
        if state.get("version") != VERSION:
            return f"written by another spherear (training state version {state.get('version')})"
        for name, record in state.get("files", {}).items():
            problem = check_record(path / name, record)
            if problem:
                return problem
        return None

    def resume(self, parts: dict[str, Part], ema, say: Callable[[str], None]) -> Resumed | None:
        """Load the newest intact checkpoint, setting damaged newer ones aside; None when
        the run has none."""
        from accelerate.utils import broadcast_object_list

        acc = self.accelerator
        chosen, damaged = None, []
        if acc.is_main_process:
            sweep(self.dir.parent)  # the run folder: a killed run's temporaries
            for path in reversed(self.all()):
                problem = self.check(path)
                if problem is None:
                    chosen = path
                    break
                damaged.append((path, problem))
            for path, problem in damaged:
                aside = path.with_name(f"damaged-{path.name}")
                remove(aside, "checkpoint/aside")
                path.rename(aside)
                fallback = f"resuming from {chosen.name}" if chosen else "no older one is intact"
                note(f"{path}: damaged ({problem}); set aside as {aside.name}, {fallback}")
            if chosen is not None:  # a run killed while it pruned
                for old in self.all()[: -self.keep]:
                    remove(old, "checkpoint/prune")
        chosen, damaged = broadcast_object_list([chosen, damaged])
        if chosen is None:
            if damaged:
                raise TrainingError(
                    f"{self.dir}: no intact checkpoint (the damaged ones are set aside as "
                    "damaged-step-*); delete the run folder to start over, or restore a copy"
                )
            return None
        state = read_json(chosen / "state.json", "")
        numerics.adopt(state["numerics"], acc.device, str(chosen), say)
        self._load(chosen, parts, ema)
        return Resumed(state["step"], state["metrics_lines"], chosen)

    def _load(self, path: Path, parts: dict[str, Part], ema) -> None:
        from safetensors import safe_open
        from torch.distributed.checkpoint.state_dict import set_state_dict

        for name, part in parts.items():
            weights = load_file(path / f"{name}.safetensors")
            optimizers, optimizer_state = [], {}
            if part.optimizer is not None:
                optimizers = [_raw(part.optimizer)]
                file = path / f"{name}.optimizer.safetensors"
                with safe_open(file, "pt") as f:
                    metadata = f.metadata()
                current = optimizers[0].state_dict()["param_groups"]
                optimizer_state = _unflatten_optimizer(load_file(file), metadata, current)
            try:
                set_state_dict(part.model, optimizers, model_state_dict=weights,
                               optim_state_dict=optimizer_state, options=_options())  # fmt: skip
            except (RuntimeError, KeyError, ValueError) as e:
                raise TrainingError(
                    f"{path}: does not fit this run's {name} "
                    f"({' '.join(str(e).split())[:160]}); resume with the run's own recipe"
                ) from None
        if ema is not None:
            with safe_open(path / "ema.safetensors", "pt") as f:
                decay = float(f.metadata()["decay"])
            ema.load_state_dict({"decay": decay, "shadow": load_file(path / "ema.safetensors")})
        rank = f"rank{self.accelerator.process_index}/"
        states = {k[len(rank) :]: v for k, v in load_file(path / "rng.safetensors").items()
                  if k.startswith(rank)}  # fmt: skip
        if states:  # a process that did not exist before (more processes now) keeps its own
            _set_rng_states(states)
