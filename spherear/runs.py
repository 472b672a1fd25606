"""Finding a workspace's runs and outputs, so bare commands (``spherear sample``,
``spherear eval-fid``, ``spherear push-to-hub``) act on the newest one and say which;
``find_run`` is the one way a command finds the run (or checkpoint) it acts on.

A run folder is one ``train-vae``/``train-ar`` wrote (``recipe.toml`` + ``export/``);
recipes put them under ``runs/`` by default.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from spherear.config import Recipe, load_recipe
from spherear.errors import SpherearError
from spherear.hub_files import parse_address

RUNS = Path("runs")


def _newest(paths: list[Path]) -> Path | None:
    return max(paths, key=lambda p: p.stat().st_mtime_ns, default=None)


def _export_kind(export: Path) -> str | None:
    try:
        return json.loads((export / "config.json").read_bytes()).get("kind")
    except (OSError, ValueError, AttributeError):
        return None


WHAT = {"ar": "train-ar", "vae": "train-vae"}


@dataclass
class Found:
    """What a command acts on: the checkpoint to load (an export folder, an authors' file or
    an hf:// address), the run folder it belongs to (None outside a run) and how it was
    chosen, for the user."""

    checkpoint: str
    run: Path | None
    how: str


def is_run(path: Path) -> bool:
    """A finished run folder: its recipe and its export."""
    return (path / "recipe.toml").is_file() and (path / "export" / "config.json").is_file()


def _newest_run(root: Path, kind: str) -> Path | None:
    """The run folder under ``root`` whose ``kind`` export ("ar" or "vae") is newest."""
    exports = [p.parent for p in root.glob("**/export/config.json")]
    newest = _newest([e / "config.json" for e in exports if _export_kind(e) == kind])
    return None if newest is None else newest.parent.parent


def find_run(
    given: str | Path | None = None,
    root: str | Path = RUNS,
    kinds: tuple[str, ...] = ("ar",),
    option: str = "the run or checkpoint",
) -> Found:
    """The one way commands find their run: ``given`` as it is (a run folder, its export, an
    export or authors' file elsewhere, an hf:// address), placed in its run if it has one;
    without it, the newest finished run under ``root`` of the first of ``kinds`` that has
    one. ``option`` is what to pass instead, for the message when there is none."""
    if given is None:
        for i, kind in enumerate(kinds):
            run = _newest_run(Path(root), kind)
            if run is not None:
                how = f"the newest {WHAT[kind]} run under {root}/"
                if i:
                    how = f"no {WHAT[kinds[0]]} run, so {how}"
                return Found(str(run / "export"), run, how)
        what = " or ".join(WHAT[kind] for kind in kinds)
        raise SpherearError(
            f"no finished {what} run under {root}/ (no export/config.json of kind "
            f"{' or '.join(repr(k) for k in kinds)}); pass {option}"
        )
    if parse_address(given) is not None:
        return Found(str(given), None, "as given")
    path = Path(given)
    if is_run(path):
        return Found(str(path / "export"), path, "as given")
    in_run = is_run(path.parent) and path.resolve() == (path.parent / "export").resolve()
    return Found(str(given), path.parent if in_run else None, "as given")


def latest_samples(root: str | Path = RUNS) -> Path:
    """The newest finished ``samples.npz`` written by ``spherear sample`` under ``root``."""
    newest = _newest(list(Path(root).glob("**/samples.npz")))
    if newest is None:
        raise SpherearError(f"no samples.npz under {root}/; run `spherear sample` or pass the file")
    return newest


def _newest_in(folder: Path, pattern: str) -> Path | None:
    return _newest(list(folder.glob(pattern))) if folder.is_dir() else None


def run_outputs(root: str | Path = RUNS) -> dict[str, dict[str, str]]:
    """What each run under ``root`` has produced, by kind, for people to open: the export,
    the loss curves, the newest reconstruction or sample grid, sample sets and their metrics."""
    found: dict[str, dict[str, str]] = {}
    for recipe in sorted(Path(root).glob("**/recipe.toml")):
        run = recipe.parent
        if run.name == "export" or "samples" in run.parts[len(Path(root).parts) :]:
            continue
        outputs = {
            "export": run / "export" if (run / "export" / "config.json").is_file() else None,
            "loss curves": run / "curves.png" if (run / "curves.png").is_file() else None,
            "reconstructions": _newest_in(run / "reconstructions", "*.png"),
            "training samples": _newest_in(run / "samples", "step-*.png"),
        }
        for sample_set in sorted((run / "samples").glob("*/samples.npz")):
            folder = sample_set.parent
            for name in ("grid.png", "eval-probe.json", "eval-fid.json"):
                if (folder / name).is_file():
                    outputs[f"{folder.name}/{name}"] = folder / name
        found[str(run)] = {k: str(v) for k, v in outputs.items() if v is not None}
    return found


def samples_recipe(samples: Path) -> tuple[Recipe | None, Path | None]:
    """The recipe of the run ``samples`` belongs to (``<run>/samples/<tag>/samples.npz``), else
    of the export that ``settings.json`` beside it names; (None, None) if neither has one."""
    candidates = [samples.parent.parent.parent]
    settings = samples.parent / "settings.json"
    if settings.is_file():
        # `spherear sample` records the checkpoint as "PATH (what it is)"
        try:
            checkpoint = json.loads(settings.read_bytes()).get("checkpoint")
        except (OSError, ValueError, AttributeError):  # damaged: the run folder may still tell
            checkpoint = None
        if isinstance(checkpoint, str):
            candidates.append(Path(checkpoint.partition(" (")[0]))
    for folder in candidates:
        if (folder / "recipe.toml").is_file():
            return load_recipe(folder / "recipe.toml"), folder / "recipe.toml"
    return None, None
