"""Files built to run code when they are unpickled, planted wherever spherear reads a file
that could hold a pickle: checkpoints (ours, the authors', resume state), weights for
LPIPS, Inception and timm, and every .npz/.npy. None may run: each is refused in one line
(or, for files spherear wrote itself, treated as damaged and made again)."""

import os
import pickle
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch

from .pipeline import SAMPLES, tree

# commands in processes of their own, on the tiny pipeline (see tests/pipeline.py)
pytestmark = pytest.mark.slow

CHECKPOINT = "runs/ar/checkpoints/step-00000004"
SAMPLE_DIR = str(Path(SAMPLES).parent)


class Payload:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def _torch_file(path: Path, marker: Path) -> None:
    torch.save({"model": {"weight": Payload(marker)}, "features.0.weight": Payload(marker)}, path)


def _pickle_file(path: Path, marker: Path) -> None:
    path.write_bytes(pickle.dumps(Payload(marker)))


def _npz(path: Path, marker: Path, *names: str) -> None:
    evil = np.empty(1, dtype=object)
    evil[0] = Payload(marker)
    with open(path, "wb") as f:
        np.savez(f, **{name: evil for name in names})


def _npy(path: Path, marker: Path) -> None:
    evil = np.empty(4, dtype=object)
    evil[:] = [Payload(marker)] * 4
    np.save(path, evil, allow_pickle=True)


# (id, where the payload goes, how it is made, command, exit status, what stderr says)
CASES = [
    ("authors-checkpoint-info", "evil.pt", _torch_file, "info --checkpoint evil.pt", 2,
     "refused to unpickle it: it asks for posix.system"),
    ("authors-checkpoint-sample", "evil.pt", _torch_file, "sample --n 4 --checkpoint evil.pt",
     2, "refused to unpickle"),
    ("authors-vae-cache-latents", "evil.pt", _torch_file,
     "cache-latents --recipe ar.toml --vae evil.pt --out new", 2, "refused to unpickle"),
    ("authors-vae-train-ar", "evil.pt", _torch_file, "train-ar --recipe ar.toml --set "
     "train.inputs=images --set train.vae_checkpoint=evil.pt --set run.output_dir=runs/new",
     2, "refused to unpickle"),
    ("perceptual-weights", "vgg.pth", _torch_file, "train-vae --recipe vae.toml --set "
     "run.output_dir=runs/new --set vae_loss.perceptual_weight=1 --set "
     "vae_loss.perceptual_weights=vgg.pth", 2, "refused to unpickle"),
    ("inception-weights", "inception.pth", _torch_file,
     f"eval-fid {SAMPLES} --ref {SAMPLES} --inception-weights inception.pth", 2,
     "refused to unpickle"),
    ("resume-accelerate-custom-state", f"{CHECKPOINT}/custom_checkpoint_0.pkl", _pickle_file,
     "train-ar --recipe ar.toml", 2, "custom_checkpoint_0.pkl: a pickle in the run folder"),
    ("resume-accelerate-rng", "runs/vae/checkpoints/step-00000004/random_states_0.pkl",
     _pickle_file, "train-vae --recipe vae.toml", 2, "a pickle in the run folder"),
    ("resume-accelerate-optimizer", f"{CHECKPOINT}/optimizer.bin", _torch_file,
     "train-ar --recipe ar.toml", 2, "optimizer.bin: a pickle in the run folder"),
    ("samples-object-array", "evil.npz", lambda p, m: _npz(p, m, "arr_0"),
     f"eval-fid evil.npz --ref {SAMPLES}", 2, "arr_0 is object"),
    ("reference-statistics", "ref.npz", lambda p, m: _npz(p, m, "mu", "sigma"),
     f"eval-fid {SAMPLES} --ref ref.npz --inception-weights {{inception}}", 2,
     "stored statistics are unreadable"),
    ("probe-labels", f"{SAMPLE_DIR}/labels.npy", _npy, f"eval-probe {SAMPLES}", 2,
     "labels.npy: not a readable .npy file"),
    ("sample-chunk", "runs/ar/samples/x/chunks/chunk-000000.npz",
     lambda p, m: _npz(p, m, "images", "labels"),
     "sample --n 4 --batch-size 2 --out runs/ar/samples/x", 2,
     "chunk-000000.npz: damaged (ValueError), so it was deleted"),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_a_planted_pickle_never_runs(pipeline, cli, tmp_path, case):
    _, where, make, command, code, expected = case
    run = pipeline.restore("eval-fid", after=True)
    if case[0] == "sample-chunk":  # an unfinished sample folder of the same settings
        done = cli.run(shlex.split(command), run, env={**pipeline.env(),
                       "SPHEREAR_CRASH_AT": "sample/chunk#2"})  # fmt: skip
        assert done.code == -9
    marker = tmp_path / "code-ran"
    (run / where).parent.mkdir(parents=True, exist_ok=True)
    make(run / where, marker)
    command = command.format(inception=pipeline.inception)
    done = cli.run(shlex.split(command), run, env=pipeline.env())
    assert not marker.exists(), "the planted pickle ran"
    assert done.code == code, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and len(done.lines) == 1, done.stderr
    assert expected in done.lines[0]


def test_a_planted_feature_cache_is_computed_again_not_unpickled(pipeline, cli, tmp_path):
    run = pipeline.restore("eval-fid", after=True)
    marker = tmp_path / "code-ran"
    cached = next((run / "cache" / "features").glob("*.npz"))
    _npz(cached, marker, "pool", "logits", "spatial")
    command = pipeline.command("eval-fid")
    done = cli.run(command, run, env=pipeline.env())
    assert not marker.exists() and done.code == 0, done.stderr[-3000:]
    assert "damaged cache file (ValueError); computing it again" in done.stderr
    assert tree(run) == pipeline.after("eval-fid")  # the same features, written again


def test_timm_weights_are_checked_before_timm_reads_them(pipeline, cli, tmp_path):
    run = pipeline.restore("eval-fid", after=True)
    marker = tmp_path / "code-ran"
    _torch_file(run / "timm.pth", marker)
    command = [*pipeline.command("eval-fid"), "--features", "timm:resnet18=timm.pth"]
    done = cli.run(command, run, env=pipeline.env())
    assert not marker.exists() and done.code == 2, done.stderr[-3000:]
    assert "timm.pth: refused to unpickle" in done.lines[-1]
