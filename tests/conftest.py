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


def kill_when(cmd: list[str], ready: Callable[[], bool], timeout: float = 300, **popen) -> None:
    """Start ``cmd`` and SIGKILL it as soon as ``ready()`` holds (say, its first checkpoint
    exists), as a crash or a pre-empted job would; output is discarded."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **popen)
    deadline = time.time() + timeout
    while not ready() and time.time() < deadline:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


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
