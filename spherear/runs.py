"""Finding a workspace's runs and outputs, so bare commands (``spherear sample``,
``spherear eval-fid``, ``spherear push-to-hub``) act on the newest one and say which.

A run folder is one ``train-vae``/``train-ar`` wrote (``recipe.toml`` + ``export/``);
recipes put them under ``runs/`` by default.
"""

from __future__ import annotations

import json
from pathlib import Path

from spherear.errors import SpherearError

RUNS = Path("runs")


def _newest(paths: list[Path]) -> Path | None:
    return max(paths, key=lambda p: p.stat().st_mtime_ns, default=None)


def _export_kind(export: Path) -> str | None:
    try:
        return json.loads((export / "config.json").read_text()).get("kind")
    except (OSError, json.JSONDecodeError):
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
