from __future__ import annotations

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


def kill_when(cmd: list[str], ready: Callable[[], bool], timeout: float = 300, **popen) -> None:
    """Start ``cmd`` and SIGKILL it as soon as ``ready()`` holds (say, its first checkpoint
    exists), as a crash or a pre-empted job would; output is discarded."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **popen)
    deadline = time.time() + timeout
    while not ready() and time.time() < deadline:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.fixture(autouse=True, scope="session")
def _session_cache(tmp_path_factory):
    """Probes and feature statistics go to this session's own cache, not ~/.cache."""
    patch = pytest.MonkeyPatch()
    patch.setenv("SPHEREAR_CACHE", str(tmp_path_factory.mktemp("spherear_cache")))
    yield
    patch.undo()
