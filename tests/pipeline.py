"""A whole tiny pipeline in a workspace, run once through the CLI (prepare-data from an image
folder, train-vae, cache-latents, train-ar, sample, eval-fid), with a snapshot of the
workspace after each stage and the write points each stage reached. Tests restore the
snapshot before a stage, run it their way (killed, with bad input, with planted files) and
compare with the snapshot after it."""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from .forkserver import ForkServer

MODEL = """
[vae]
resolution = 32
latent_dim = 16
channels = [8, 16, 16, 16]  # 4x4 tokens: sampling the grids stays cheap
num_heads = 2
encoder_depth = 1
decoder_depth = 1
num_registers = 0

[data]
source = "folder:images"
prepared = "data/prepared"
latents = "data/latents"

[train]
lr = 3e-3
warmup_steps = 1
global_batch_size = 8
micro_batch_size = 4
max_steps = 4
mixed_precision = "no"
num_workers = 0
log_every = 1
checkpoint_every = 2
keep_checkpoints = 1
sample_every = 2
log_with = "none"
"""
VAE = (
    '[run]\nname = "vae"\noutput_dir = "runs/vae"\n'
    + MODEL
    + """
[vae_loss]
perceptual_weight = 0.0
disc_start = 2
disc_channels = 8
disc_layers = 2
kl_weight = 0.00025
initial_kappa = 3000.0
"""
)
AR = (
    '[run]\nname = "ar"\noutput_dir = "runs/ar"\n'
    + MODEL.replace('log_with = "none"', 'log_with = "none"\nvae_checkpoint = "runs/vae/export"')
    + """
[ar]
size = "tiny"
depth = 2
num_heads = 2
width = 32
head_depth = 2
head_width = 32
head_groups = 1
num_classes = 2
num_class_tokens = 2
diff_batch_mul = 2

[cache]
shard_size = 16
batch_size = 8

[augment]
hflip = true

[sample]
cfg = 2.0
steps = 2
"""
)
SAMPLES = "runs/ar/samples/n4-cfg2-linear-steps2-sde-balanced-seed0/samples.npz"
CLASSES = {"disk": 0, "ring": 1}  # synthetic classes, saved as an image folder
PER_CLASS = 20


def stages(inception: Path) -> list[tuple[str, list]]:
    return [
        ("prepare-data", ["prepare-data", "--recipe", "ar.toml"]),
        ("train-vae", ["train-vae", "--recipe", "vae.toml"]),
        ("cache-latents", ["cache-latents", "--recipe", "ar.toml"]),
        ("train-ar", ["train-ar", "--recipe", "ar.toml"]),
        ("sample", ["sample", "--n", "4", "--batch-size", "2"]),
        ("eval-fid", ["eval-fid", SAMPLES, "--ref", SAMPLES, "--inception-weights", inception]),
    ]


def tree(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` and the sha256 of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _images(root: Path) -> None:
    from spherear.data.synthetic import render

    for name, label in CLASSES.items():
        (root / name).mkdir(parents=True)
        for k in range(PER_CLASS):
            pixels, _ = render(7, label + 10 * k, 40)  # classes cycle through the indices
            Image.fromarray(pixels).save(root / name / f"{k:03d}.png")
    (root / "ring" / "broken.png").write_bytes(b"\x89PNG not an image")  # skipped, listed


@dataclass
class Pipeline:
    """``run`` is where every command runs (the same absolute path each time, since a
    prepared dataset records where its source was)."""

    root: Path
    cli: ForkServer
    inception: Path
    snapshots: dict[str, Path] = field(default_factory=dict)
    points: dict[str, list[str]] = field(default_factory=dict)

    @property
    def run(self) -> Path:
        return self.root / "run"

    def env(self) -> dict[str, str]:
        # caches inside the workspace, so that they are compared (and HOME is checked) too
        return {"HOME": str(self.run / "home"), "SPHEREAR_CACHE": str(self.run / "cache"),
                "HF_HOME": str(self.run / "home" / ".cache" / "huggingface")}  # fmt: skip

    def command(self, stage: str) -> list[str]:
        return dict(stages(self.inception))[stage]

    def restore(self, stage: str, after: bool = False) -> Path:
        """The workspace as it was just before ``stage`` ran (or just after it)."""
        names = [name for name, _ in stages(self.inception)]
        before = names[names.index(stage) - 1] if names.index(stage) else "start"
        shutil.rmtree(self.run, ignore_errors=True)
        shutil.copytree(self.snapshots[stage if after else before], self.run, symlinks=True)
        return self.run

    def after(self, stage: str) -> dict[str, str]:
        return tree(self.snapshots[stage])

    def build(self) -> Pipeline:
        self.run.mkdir(parents=True)
        (self.run / "vae.toml").write_text(VAE)
        (self.run / "ar.toml").write_text(AR)
        (self.run / "home").mkdir()
        _images(self.run / "images")
        self._snapshot("start")
        for stage, argv in stages(self.inception):
            log = self.root / f"{stage}.points"
            done = self.cli.run(argv, self.run, env={**self.env(), "SPHEREAR_CRASH_LOG": str(log)})
            assert done.code == 0, f"{stage}: {done.stderr[-3000:]}"
            self.points[stage] = log.read_text().split()
            self._snapshot(stage)
        return self

    def _snapshot(self, name: str) -> None:
        self.snapshots[name] = self.root / "snapshots" / name
        shutil.copytree(self.run, self.snapshots[name], symlinks=True)


def build_pipeline(root: Path, cli: ForkServer) -> Pipeline:
    from spherear.eval.features import random_inception_weights

    inception = random_inception_weights(root / "inception.pth")
    return Pipeline(root, cli, inception).build()
