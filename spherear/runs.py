"""Finding a workspace's runs and outputs, so bare commands (``spherear sample``,
``spherear eval-fid``, ``spherear push-to-hub``) act on the newest one and say which.

A run folder is one ``train-vae``/``train-ar`` wrote (``recipe.toml`` + ``export/``);
recipes put them under ``runs/`` by default.
"""

from __future__ import annotations

import json
from pathlib import Path

from spherear.config import Recipe, load_recipe
from spherear.errors import SpherearError

RUNS = Path("runs")


def _newest(paths: list[Path]) -> Path | None:
    return max(paths, key=lambda p: p.stat().st_mtime_ns, default=None)


def _export_kind(export: Path) -> str | None:
    try:
        return json.loads((export / "config.json").read_bytes()).get("kind")
    except (OSError, ValueError, AttributeError):
        return None


def latest_run(root: str | Path = RUNS, kind: str = "ar") -> Path:
    """The run folder under ``root`` whose ``kind`` export ("ar" or "vae") is newest."""
    exports = [p.parent for p in Path(root).glob("**/export/config.json")]
    newest = _newest([e / "config.json" for e in exports if _export_kind(e) == kind])
    if newest is None:
        what = "train-ar" if kind == "ar" else "train-vae"
        raise SpherearError(
            f"no finished {what} run under {root}/ (no export/config.json of kind '{kind}'); "
            f"pass the run or checkpoint explicitly"
        )
    return newest.parent.parent


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
