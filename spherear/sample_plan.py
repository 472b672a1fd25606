"""What ``spherear sample`` makes, decided before any weights are read.

The plan (how many images, guidance, steps, labels, seed, chunk size), the labels of every
image and where the samples go (``spherear.runs.find_run`` says where the checkpoint comes
from). Nothing here imports torch: the command checks its arguments against the
checkpoint's header (``checkpoint_header``) and stops in one line, before loading gigabytes
of weights for a request that cannot be met.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from spherear.checkpoint_header import Header, Weights
from spherear.config import SampleConfig
from spherear.errors import SpherearError
from spherear.hub_files import parse_address
from spherear.runs import Found

LABEL_STREAM = 0


class SampleError(SpherearError):
    """Sampling cannot start or continue; the message says what to change."""


@dataclass(frozen=True)
class Plan:
    """What to sample; with the weights and the device, this fixes every output byte."""

    n: int
    cfg: float
    cfg_schedule: str
    steps: int
    sampler: str
    steps_last: int
    temperature: float
    compile: bool
    precision: str
    normalise: str = "auto"
    labels: str = "balanced"
    seed: int = 0
    batch_size: int = 100
    weights: Weights = "ema"
    only_class: int | None = None  # every image of this class, in place of ``labels``

    @classmethod
    def from_recipe(cls, defaults: SampleConfig, n: int, **given) -> Plan:
        """``given`` values that are None fall back to the recipe's ``[sample]`` section."""
        for f in fields(SampleConfig):
            if given.get(f.name) is None:
                given[f.name] = getattr(defaults, f.name)
        return cls(n=n, **{k: v for k, v in given.items() if v is not None})

    @property
    def sampling(self) -> SampleConfig:
        """How each token is drawn."""
        return SampleConfig(**{f.name: getattr(self, f.name) for f in fields(SampleConfig)})

    @property
    def tag(self) -> str:
        """The default output folder name, e.g. n1000-cfg4.5-linear-steps100-sde-balanced-seed0
        (class207 in place of balanced for the images of one class,
        steps50to5 with step annealing, -temp0.7 after the sampler below temperature 1,
        -norm-before_cfg or -norm-none after that when the normalisation is chosen, -bf16 at
        the end when sampled in bf16)."""
        steps = f"{self.steps}to{self.steps_last}" if self.steps_last else f"{self.steps}"
        temp = f"-temp{self.temperature:g}" if self.temperature != 1.0 else ""
        temp += f"-norm-{self.normalise}" if self.normalise != "auto" else ""
        extra = ("-compiled" if self.compile else "") + ("-raw" if self.weights == "raw" else "")
        extra += "-bf16" if self.precision == "bf16" else ""
        labels = self.labels if self.only_class is None else f"class{self.only_class}"
        return (
            f"n{self.n}-cfg{self.cfg:g}-{self.cfg_schedule}-steps{steps}-{self.sampler}{temp}-"
            f"{labels}-seed{self.seed}{extra}"
        )


def only_a_vae(description: str) -> SampleError:
    return SampleError(
        f"{description} holds only a VAE; sample needs a full SphereAR "
        "(a train-ar run or export, or the authors' SphereAR_*.pt)"
    )


def check_plan(plan: Plan, header: Header) -> None:
    """Refuse, in one line, a plan that the checkpoint described by ``header`` cannot meet."""
    if header.kind != "ar":
        raise only_a_vae(header.path)
    if plan.weights not in header.weights:
        raise SampleError(
            f"{header.path} holds no {plan.weights} AR weights (it has: "
            f"{', '.join(header.weights) or 'none'}); pass --weights {header.weights[0]}"
            if header.weights
            else f"{header.path} holds no AR weights; re-export the run"
        )
    check_label_split(plan.n, header.num_classes, plan.labels, plan.only_class)


def check_label_split(n: int, num_classes: int, mode: str, only_class: int | None = None) -> None:
    if only_class is not None:
        if not 0 <= only_class < num_classes:
            raise SampleError(
                f"--class {only_class}: the model has classes 0 to {num_classes - 1}; pass "
                "one of those"
            )
        return
    if mode not in ("balanced", "random"):
        raise SampleError(f"--labels {mode!r}: use 'balanced' or 'random'")
    if mode == "balanced" and n % num_classes:
        lower = n // num_classes * num_classes
        nearest = lower if lower and n - lower <= num_classes / 2 else lower + num_classes
        raise SampleError(
            f"--n {n} does not split evenly over {num_classes} classes (--labels balanced); "
            f"use --n {nearest}, or --labels random"
        )


def class_labels(
    n: int, num_classes: int, mode: str, seed: int, only_class: int | None = None
) -> np.ndarray:
    """``balanced``: image i has class i mod num_classes, so n / num_classes per class;
    ``random``: uniform, as the authors sampled, each label from the stream of (seed, i);
    ``only_class`` given: every image has that class."""
    check_label_split(n, num_classes, mode, only_class)
    if only_class is not None:
        return np.full(n, only_class, np.int64)
    if mode == "balanced":
        return np.arange(n, dtype=np.int64) % num_classes
    return np.array(
        [np.random.default_rng([seed, i, LABEL_STREAM]).integers(num_classes) for i in range(n)],
        np.int64,
    )


# ---------------------------------------------------------------------------------------
# Where to


def default_out(source: Found, plan: Plan) -> Path:
    """``<run>/samples/<tag>``; for a checkpoint outside a run, ``samples/<name>-<tag>``
    beside it (in the working folder for an hf:// address)."""
    if source.run is not None:
        return source.run / "samples" / plan.tag
    address = parse_address(source.checkpoint)
    if address is not None:
        return Path("samples") / f"{Path(address.path or address.repo_id).stem}-{plan.tag}"
    path = Path(source.checkpoint)
    return path.parent / "samples" / f"{path.stem}-{plan.tag}"
