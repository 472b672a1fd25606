"""PNG figures (loss curves, token norms, comparison charts): one way to start matplotlib
and one way to write a figure."""

from __future__ import annotations

import os
from pathlib import Path

from spherear.files import atomic_write, cache_dir


def pyplot():
    """``matplotlib.pyplot`` without a display, its font cache with spherear's caches rather
    than in ~/.config or ~/.matplotlib."""
    os.environ.setdefault("MPLCONFIGDIR", str(cache_dir("matplotlib")))
    import matplotlib

    matplotlib.use("Agg")  # no display on training machines
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: str | Path, point: str) -> Path:
    """Write ``fig`` atomically as a PNG (``point`` names the write for crash tests) and
    close it."""
    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"), point)
    pyplot().close(fig)
    return path
