"""A run's ``metrics.jsonl``: one JSON line per logged step, kept in step with the
checkpoints, so that a resumed run's log equals an uninterrupted run's."""

from __future__ import annotations

from pathlib import Path

from spherear.files import JsonLines


class MetricsLog:
    """One JSON line per logged step in ``run/metrics.jsonl`` (main process only); a kill
    during an append tears only the last line, which is dropped (``spherear.files``)."""

    def __init__(self, run_dir: Path, enabled: bool):
        self.file = JsonLines(run_dir / "metrics.jsonl", "metrics")
        self.enabled = enabled
        self.lines = 0

    def keep(self, lines: int) -> None:
        """Back to the first ``lines`` records, those a checkpoint covers: a killed run may
        have logged steps past it."""
        if self.enabled:
            self.file.keep(lines)
        self.lines = lines

    def write(self, record: dict) -> None:
        if self.enabled:
            self.file.append(record)
        self.lines += 1

    def sync(self) -> None:
        if self.enabled:
            self.file.sync()


def read_metrics(run_dir: str | Path) -> list[dict]:
    """Every record a run logged (a torn last line dropped)."""
    return JsonLines(Path(run_dir) / "metrics.jsonl").read()
