"""Loss curves as a PNG, drawn from a run's ``metrics.jsonl`` when training ends, so a run
can be judged without starting TensorBoard."""

from __future__ import annotations

from pathlib import Path

from spherear.figures import pyplot, save_png
from spherear.train.metrics import read_metrics


def plot_curves(run_dir: str | Path, keys: tuple[str, ...], out_name: str = "curves.png") -> Path:
    """One panel per metric in ``keys`` that the run logged (and not only as 0), against
    the step."""
    plt = pyplot()
    records = read_metrics(run_dir)
    # a loss that is switched off (the discriminator before disc_start) logs only zeros
    logged = [k for k in keys if any(r.get(k) for r in records)]
    fig, axes = plt.subplots(1, max(1, len(logged)), figsize=(4 * max(1, len(logged)), 3),
                             squeeze=False)  # fmt: skip
    for ax, key in zip(axes[0], logged, strict=False):  # no panel when nothing was logged
        points = [(r["step"], r[key]) for r in records if key in r]
        steps, values = zip(*points, strict=True)
        ax.plot(steps, values, lw=1, marker="." if len(points) < 30 else None)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.suptitle(Path(run_dir).name)
    fig.tight_layout()
    return save_png(fig, Path(run_dir) / out_name, "curves")
