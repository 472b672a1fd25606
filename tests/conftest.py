from __future__ import annotations

import math
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from spherear.config import Recipe, load_recipe

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def tiny_recipe() -> Recipe:
    """An even smaller model than recipes/tiny.toml, for fast unit tests."""
    return load_recipe(
        ROOT / "recipes" / "tiny.toml",
        [
            "vae.channels=[16, 32, 32]",
            # the tests below were worked out for tokens of dimension 16 (radius 4)
            "vae.latent_dim=16",
            "vae.num_heads=2",
            "vae.encoder_depth=1",
            "vae.decoder_depth=1",
            "vae.num_registers=2",
            "ar.depth=2",
            "ar.num_heads=2",
            "ar.width=32",
            "ar.head_depth=2",
            "ar.head_width=32",
            "ar.head_groups=2",
            # the recipe uses 1; tests keep several noisy copies per token covered
            "ar.diff_batch_mul=4",
        ],
    )


def spec_rope_table(grid: int, head_dim: int, num_prefix: int, x_first: bool = True):
    """The 2D RoPE table as shared/reference/spherear-facts.md words it, one angle at a time:
    prefix tokens at (0, 0); token (r, c) at x = c + 1.5, y = r + 1.5; pair p < d/4 turns by
    x f_p, pair d/4 + p by y f_p, f_j = 10000^(-2j / (d/2)). ``x_first=False`` swaps the
    axes, to show that the order matters."""
    quarter = head_dim // 4
    freqs = [10000 ** (-2 * j / (head_dim / 2)) for j in range(quarter)]
    rows = [[(1.0, 0.0)] * (2 * quarter) for _ in range(num_prefix)]
    for r in range(grid):
        for c in range(grid):
            first, second = (c + 1.5, r + 1.5) if x_first else (r + 1.5, c + 1.5)
            angles = [first * f for f in freqs] + [second * f for f in freqs]
            rows.append([(math.cos(a), math.sin(a)) for a in angles])
    return torch.tensor(rows, dtype=torch.float64)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def one_line_error(result, *words: str) -> None:
    """A CliRunner result that failed as a user error: exit status 2 and one line on stderr
    naming each of ``words``."""
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for word in words:
        assert word in lines[0], lines[0]


def file_stamps(folder: Path) -> dict[str, int]:
    """Every path under ``folder`` and its modification time: equal means untouched."""
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


def kill_when(cmd: list[str], ready: Callable[[], bool], timeout: float = 300,
              group: bool = False, **popen) -> None:  # fmt: skip
    """Start ``cmd`` and SIGKILL it as soon as ``ready()`` holds (say, its first checkpoint
    exists), as a crash or a pre-empted job would; output is discarded. ``group``: the
    command runs in a process group of its own, and all of it is killed (torchrun and its
    workers, as a scheduler ends a job)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=group, **popen)  # fmt: skip
    deadline = time.time() + timeout
    while not ready() and time.time() < deadline:
        time.sleep(0.005)
    if group:
        os.killpg(proc.pid, signal.SIGKILL)
    else:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.fixture(autouse=True, scope="session")
def _session_cache(tmp_path_factory):
    """Probes and feature statistics go to this session's own cache, not ~/.cache."""
    patch = pytest.MonkeyPatch()
    patch.setenv("SPHEREAR_CACHE", str(tmp_path_factory.mktemp("spherear_cache")))
    yield
    patch.undo()


@pytest.fixture(scope="session")
def cli(tmp_path_factory):
    """Runs ``spherear`` commands in processes of their own (see ``forkserver``)."""
    from .forkserver import ForkServer

    server = ForkServer(tmp_path_factory.mktemp("forkserver"))
    yield server
    server.close()


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory, cli):
    """The tiny pipeline run once through the CLI, snapshot after every stage."""
    from .pipeline import build_pipeline

    return build_pipeline(tmp_path_factory.mktemp("pipeline"), cli)
