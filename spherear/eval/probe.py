"""The offline quality measure for small images, where no Inception weights exist: a small
CNN (the "probe") trained on the prepared dataset itself.

It reports two numbers for generated samples: **probe class-consistency**, the share of
samples the probe assigns to the class they were generated for, and **FD_probe**, the
Fréchet distance between the probe's penultimate features of the samples and of real
held-out images. Neither is FID: both depend on this probe, its settings and its data, so
compare them only between runs measured with the same probe (same ``fingerprint``).

The probe trains once, on CPU, for a fixed number of steps, and is cached outside the data
folder (which may be read-only, and is an input), in ``$SPHEREAR_CACHE/probes/<data
fingerprint>-<flips>/`` (default ``~/.cache/spherear/probes/``): ``probe.safetensors`` and
``probe.json`` (its settings, the data's fingerprint, its held-out accuracy overall and per
class, the weights' hash). Later calls reuse it while the data is unchanged; re-preparing the
data retrains it. A seeded class-stratified choice of images is held out, whatever order the
data is stored in (``spherear.data.splits``): they give the probe's own accuracy and the
real side of FD_probe. It sees mirror images in training only when the classes are
flip-invariant (the generator's ``augment.hflip``): a class and its mirror image may be two
classes (stripes leaning left and right).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from spherear.data.splits import class_counts, held_out_split, stratified_choice
from spherear.errors import SpherearError
from spherear.eval.metrics import feature_statistics, frechet_distance
from spherear.eval.npz import NpzImages, PreparedReference, file_sha256
from spherear.files import atomic_write, cache_dir, check_output, sweep, write_json
from spherear.folder_kinds import check_output_file
from spherear.runs import latest_samples, samples_recipe

VERSION = 2  # bump when a probe trained by older code must not be reused
WEIGHTS = "probe.safetensors"
META = "probe.json"
MAX_RESOLUTION = 64  # beyond it the in-memory training set and the CPU time grow too much
MIN_ACCURACY = 0.9  # below it on real held-out images, the probe's verdicts on samples mislead
NOTE = (
    "probe class-consistency and FD_probe come from a small classifier trained on the data "
    "folder, not from Inception: they are not FID and compare only between results with the "
    "same probe fingerprint"
)


@dataclass(frozen=True)
class ProbeSettings:
    """How the probe is trained (recorded in ``probe.json``)."""

    width: int = 12
    steps: int = 750  # a fixed budget, so any dataset size trains in about the same time
    batch_size: int = 64
    lr: float = 5e-3
    weight_decay: float = 0.05
    held_out: int = 1000  # at most; never more than a fifth of the dataset
    max_train: int = 20_000  # at most; a class-stratified choice of the rest beyond it
    hflip: bool = False  # mirror images: only for classes that are their own mirror image
    seed: int = 0
    # one thread: the weights then do not depend on the machine's core count, and on a
    # shared 2-core CPU two threads trained 5x slower (spinning while the other waits)
    threads: int = 1


def _block(c_in: int, c_out: int, stride: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_out, 3, stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    ]


class ProbeNet(nn.Module):
    """Five 3x3 conv blocks (three halve the resolution) over the image and a standardised
    copy of it, mean- and max-pooled into the features, then a linear classifier. Takes
    images as floats in [-1, 1]."""

    def __init__(self, num_classes: int, width: int = 12):
        super().__init__()
        w = width
        self.body = nn.Sequential(
            *_block(6, w),
            *_block(w, 2 * w, 2),
            *_block(2 * w, 4 * w, 2),
            *_block(4 * w, 6 * w, 2),
            *_block(6 * w, 6 * w),
        )
        self.feature_dim = 12 * w
        self.classifier = nn.Linear(self.feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        # a per-image standardised copy beside the pixels: shapes and textures show up the
        # same whatever the image's colours, while the raw copy keeps colour for FD_probe
        mean, std = x.mean((2, 3), keepdim=True), x.std((2, 3), keepdim=True)
        h = self.body(torch.cat([x, (x - mean) / (std + 0.05)], dim=1))
        # max pooling keeps "is there a corner anywhere", which averaging dilutes
        return torch.cat([h.mean((2, 3)), h.amax((2, 3))], dim=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.features(x)
        return self.classifier(f), f


def to_input(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """N x H x W x 3 uint8 -> N x 3 x H x W floats in [-1, 1]."""
    x = torch.as_tensor(images)
    return x.permute(0, 3, 1, 2).float() / 127.5 - 1


def check_probe_resolution(resolution: int) -> None:
    if resolution > MAX_RESOLUTION:
        raise SpherearError(
            f"{resolution}px images: the probe is for {MAX_RESOLUTION}px or less; "
            "use `spherear eval-fid` at this resolution"
        )


def check_resolution(data: str | Path, info: dict, resolution: int) -> None:
    """``prepare-data`` keeps images at a short side of resolution / min_crop_fraction
    (``settings.short_side``): between 1x and 2x the resolution it was prepared for."""
    check_probe_resolution(resolution)
    short_side = info["settings"]["short_side"]
    if not resolution <= short_side <= 2 * resolution:
        raise SpherearError(
            f"{data} was prepared for another resolution (stored short side {short_side}px) "
            f"than {resolution}px; pass --data prepared for {resolution}px images "
            f"(`spherear prepare-data --resolution {resolution}`)"
        )


def split(labels: np.ndarray, settings: ProbeSettings) -> tuple[np.ndarray, np.ndarray]:
    """(training indices, held-out indices): seeded class-stratified choices over the whole
    dataset, so every class is in both in proportion, whatever the storage order."""
    held = min(settings.held_out, len(labels) // 5)
    if held < 2:
        raise SpherearError(
            f"{len(labels)} images are too few to train and check a probe; prepare at least 10"
        )
    train, held_out = held_out_split(labels, held, settings.seed)
    if len(train) > settings.max_train:
        chosen = stratified_choice(labels[train], settings.max_train, settings.seed + 1)
        train = np.sort(train[chosen])
    return train, held_out


def _read(ref: PreparedReference, indices: np.ndarray) -> np.ndarray:
    if len(indices) and indices[-1] - indices[0] + 1 == len(indices):  # contiguous: one call
        return ref.read(int(indices[0]), int(indices[-1]) + 1)
    return np.concatenate([ref.read(int(i), int(i) + 1) for i in indices])


def probe_folder(ref: PreparedReference, hflip: bool) -> Path:
    """Where the probe of ``ref`` (the data at one crop size) is cached."""
    return cache_dir("probes") / f"{ref.cache_key()[:32]}-{'hflip' if hflip else 'noflip'}"


@torch.no_grad()
def _predict(net: ProbeNet, images: np.ndarray, batch_size: int = 500):
    net.eval()
    logits, features = [], []
    for start in range(0, len(images), batch_size):
        out = net(to_input(images[start : start + batch_size]))
        logits.append(out[0].numpy())
        features.append(out[1].numpy())
    return np.concatenate(logits), np.concatenate(features)


@dataclass
class Probe:
    """A trained probe, what it was trained on (``meta`` is ``probe.json``) and where it is
    cached (``folder``)."""

    net: ProbeNet
    meta: dict
    data: Path
    folder: Path
    reused: bool

    @property
    def class_names(self) -> list[str]:
        return self.meta["class_names"]

    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(logits, penultimate features) of N x H x W x 3 uint8 images."""
        return _predict(self.net, images)

    def _held_out(self) -> tuple[PreparedReference, np.ndarray]:
        ref = PreparedReference(self.data, self.meta["resolution"])
        return ref, split(ref.images.labels(), ProbeSettings(**self.meta["settings"]))[1]

    def held_out_images(self) -> np.ndarray:
        return _read(*self._held_out())

    def held_out_labels(self) -> np.ndarray:
        ref, indices = self._held_out()
        return ref.images.labels()[indices]


def _batches(n: int, batch_size: int, steps: int, generator: torch.Generator):
    """``steps`` batches of indices into ``n`` images, each pass in a fresh order."""
    order = torch.empty(0, dtype=torch.long)
    for _ in range(steps):
        while len(order) < batch_size:
            order = torch.cat([order, torch.randperm(n, generator=generator)])
        yield order[:batch_size]
        order = order[batch_size:]


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _train(
    images: np.ndarray, labels: np.ndarray, num_classes: int, s: ProbeSettings, progress: bool
) -> ProbeNet:
    from tqdm import tqdm

    x, y = torch.from_numpy(images), torch.from_numpy(labels)
    with torch.random.fork_rng(devices=[]):  # seeded without touching the caller's RNG
        torch.manual_seed(s.seed)
        net = ProbeNet(num_classes, s.width)
    generator = torch.Generator().manual_seed(s.seed)
    opt = torch.optim.AdamW(net.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=s.lr, total_steps=s.steps, pct_start=0.15
    )
    bar = tqdm(total=s.steps, unit="step", desc="training the probe", disable=not progress)
    net.train()
    for step, batch in enumerate(_batches(len(x), s.batch_size, s.steps, generator)):
        xb = to_input(x[batch])
        if s.hflip:
            flip = torch.rand(len(batch), generator=generator) < 0.5
            xb = torch.where(flip[:, None, None, None], xb.flip(3), xb)
        # a small shift of the whole batch: generated shapes are not placed exactly either
        dy, dx = torch.randint(-2, 3, (2,), generator=generator).tolist()
        xb = torch.roll(xb, (dy, dx), dims=(2, 3))
        loss = F.cross_entropy(net(xb)[0], y[batch])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        schedule.step()
        bar.update(1)
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    return net.eval()


def _cached(folder: Path, data: Path, expected: dict) -> Probe | None:
    from safetensors.torch import load_file

    meta_path, weights = folder / META, folder / WEIGHTS
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if any(meta.get(k) != v for k, v in expected.items()) or not weights.is_file():
        return None
    if file_sha256(weights) != meta.get("weights_sha256"):  # a half-replaced pair
        return None
    net = ProbeNet(len(meta["class_names"]), meta["settings"]["width"])
    net.load_state_dict(load_file(weights))
    return Probe(net.eval(), meta, data, folder, reused=True)


def load_or_train(
    data: str | Path,
    resolution: int,
    settings: ProbeSettings | None = None,
    progress: bool = True,
    flip_invariant: bool = False,
) -> Probe:
    """The probe of the prepared dataset ``data`` at ``resolution``: the cached one when the
    data is unchanged (and, if ``settings`` are given, they match), else a freshly trained
    one with ``settings`` or the defaults, then cached. Without ``settings``,
    ``flip_invariant`` says whether it may train on mirror images."""
    from safetensors.torch import save_file

    data = Path(data)
    ref = PreparedReference(data, resolution)
    check_resolution(data, ref.info, resolution)
    expected = {"version": VERSION, "resolution": resolution, "data_fingerprint": ref.cache_key()}
    if settings is not None:
        expected["settings"] = dataclasses.asdict(settings)
    settings = settings or ProbeSettings(hflip=flip_invariant)
    folder = probe_folder(ref, settings.hflip)
    probe = _cached(folder, data, expected)
    if probe is not None:
        return probe

    start = time.perf_counter()
    labels = ref.images.labels()
    names = ref.info["class_names"]
    train, held = split(labels, settings)
    train_images, held_images = _read(ref, train), _read(ref, held)
    read_seconds = time.perf_counter() - start
    start = time.perf_counter()
    with _threads(settings.threads):
        net = _train(train_images, labels[train], len(names), settings, progress)
    train_seconds = time.perf_counter() - start
    hits = _predict(net, held_images)[0].argmax(1) == labels[held]
    held_counts = class_counts(labels[held], names)
    correct = np.bincount(labels[held][hits], minlength=len(names))

    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    atomic_write(folder / WEIGHTS, lambda tmp: save_file(state, tmp), "probe/weights")
    meta = {
        **expected,
        "settings": dataclasses.asdict(settings),
        "class_names": names,
        "num_train": len(train),
        "num_held_out": len(held),
        "held_out_accuracy": float(hits.mean()),
        "train_per_class": class_counts(labels[train], names),
        "held_out_per_class": {
            name: {"images": n, "accuracy": float(correct[c] / n) if n else None}
            for c, (name, n) in enumerate(held_counts.items())
        },
        "read_seconds": round(read_seconds, 2),
        "train_seconds": round(train_seconds, 2),
        "weights_sha256": file_sha256(folder / WEIGHTS),
    }
    # probe.json last: it names the weights' hash, so a pair cut short is never reused
    write_json(folder / META, meta, "probe/meta")
    return Probe(net, meta, data, folder, reused=False)


def read_samples(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(images N x H x W x 3 uint8, labels N int64) of a ``samples.npz`` and the
    ``labels.npy`` that ``spherear sample`` writes beside it."""
    path = Path(path)
    npz = NpzImages(path)
    labels_path = path.parent / "labels.npy"
    if not labels_path.is_file():
        raise SpherearError(
            f"{path}: no labels.npy beside it; the probe needs the class of each sample "
            "(int64, one per image, as `spherear sample` writes)"
        )
    try:
        labels = np.load(labels_path, allow_pickle=False)
    except (ValueError, OSError) as e:
        reason = " ".join(str(e).split())
        raise SpherearError(f"{labels_path}: not a readable .npy file ({reason})") from None
    if labels.shape != (len(npz),) or labels.dtype.kind not in "iu":
        raise SpherearError(
            f"{labels_path}: {labels.dtype} with shape {labels.shape}; expected {len(npz)} "
            f"integer class labels, one per image of {path.name}"
        )
    if npz.shape[1] != npz.shape[2]:
        raise SpherearError(f"{path}: images are {npz.shape[1]}x{npz.shape[2]}; need square")
    check_probe_resolution(npz.shape[1])  # from the header: before anything is inflated
    return npz.read(0, len(npz)), labels.astype(np.int64)


def score(probe: Probe, images: np.ndarray, labels: np.ndarray) -> dict:
    """Probe class-consistency (overall and per class) and FD_probe of ``images``
    generated for ``labels``, against the probe's held-out real images."""
    names = probe.class_names
    if len(labels) and (labels.min() < 0 or labels.max() >= len(names)):
        raise SpherearError(
            f"labels run from {labels.min()} to {labels.max()} but the probe's data has "
            f"{len(names)} classes (0..{len(names) - 1}); is --data the generator's dataset?"
        )
    if len(images) < 2:
        raise SpherearError(f"{len(images)} sample(s); FD_probe needs at least 2")
    logits, features = probe.predict(images)
    hit = logits.argmax(1) == labels
    reference = probe.predict(probe.held_out_images())[1]
    fd = frechet_distance(*feature_statistics(features), *feature_statistics(reference))
    held_out = probe.meta["held_out_per_class"]
    per_class = {
        name: {
            "samples": int(mask.sum()),
            "class_consistency": float(hit[mask].mean()) if mask.any() else None,
            "held_out_images": held_out[name]["images"],
            "held_out_accuracy": held_out[name]["accuracy"],
        }
        for c, name in enumerate(names)
        for mask in [labels == c]
    }
    warnings = probe_warnings(probe.meta)
    if len(images) <= probe.net.feature_dim:
        warnings.append(
            f"only {len(images)} samples (<= {probe.net.feature_dim}, the probe's feature "
            "dimension): FD_probe is biased upwards and the covariance is rank-deficient"
        )
    return {
        "metrics": {
            "probe_class_consistency": float(hit.mean()),
            "FD_probe": fd,
            "probe_held_out_accuracy": probe.meta["held_out_accuracy"],
        },
        "per_class": per_class,
        "chance": 1 / len(names),
        "num_samples": len(images),
        "num_reference_images": len(reference),
        "warnings": warnings,
    }


def _listed(names: list[str], limit: int = 5) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def probe_warnings(meta: dict) -> list[str]:
    """One line for each way the probe itself is not to be trusted on this data."""
    warnings = []
    accuracy = meta["held_out_accuracy"]
    if accuracy < MIN_ACCURACY:
        worst = sorted((c["accuracy"], name) for name, c in meta["held_out_per_class"].items()
                       if c["accuracy"] is not None)[:3]  # fmt: skip
        warnings.append(
            f"the probe recognises only {accuracy:.1%} of the real held-out images (under "
            f"{MIN_ACCURACY:.0%}; weakest: {_listed([f'{n} {a:.0%}' for a, n in worst])}), so "
            "class-consistency understates every generator on this data; compare runs only "
            "with each other, or use eval-fid"
        )
    untrained = [name for name, n in meta["train_per_class"].items() if n == 0]
    if untrained:
        warnings.append(
            f"no image of {_listed(untrained)} in the probe's training split: it cannot "
            "recognise them, so their class-consistency is 0 whatever the samples; prepare "
            "more images of those classes"
        )
    unheld = [name for name, c in meta["held_out_per_class"].items() if c["images"] == 0]
    if unheld:
        warnings.append(
            f"no held-out image of {_listed(unheld)}: the held-out accuracy and FD_probe's "
            "real images leave them out; prepare more images of those classes"
        )
    return warnings


def evaluate(
    samples: str | Path,
    data: str | Path,
    settings: ProbeSettings | None = None,
    progress: bool = True,
    flip_invariant: bool = False,
) -> dict:
    """The ``eval-probe`` report of a samples file, as a JSON-ready dict, with the probe of
    ``data`` at the samples' resolution (see ``load_or_train``)."""
    images, labels = read_samples(samples)
    probe = load_or_train(data, images.shape[1], settings, progress, flip_invariant)
    report = score(probe, images, labels)
    m = probe.meta
    return {
        "protocol": f"spherear-probe/{VERSION}",
        "note": NOTE,
        "metrics": report.pop("metrics"),
        "samples": str(samples),
        "reference": f"{data} ({report['num_reference_images']} held-out real images)",
        **report,
        "probe": {
            "fingerprint": m["weights_sha256"],
            "path": str(probe.folder / WEIGHTS),
            "reused": probe.reused,
            "data_fingerprint": m["data_fingerprint"],
            "held_out_accuracy": m["held_out_accuracy"],
            "num_train": m["num_train"],
            "num_held_out": m["num_held_out"],
            "train_seconds": m["train_seconds"],
            "resolution": m["resolution"],
            "settings": m["settings"],
        },
    }


def eval_probe(
    samples: Path | None = None,
    data: Path | None = None,
    out: Path | None = None,
    say: Callable[[str], None] = lambda message: None,
    warn: Callable[[str], None] = lambda message: None,
) -> Path:
    """``spherear eval-probe``: ``samples`` (default: the newest under runs/) scored with the
    probe of ``data`` (default: ``data.prepared`` of the samples' run), trained on mirror
    images only if that run's ``augment.hflip`` says its classes are flip-invariant. The
    results are printed (``say``, the warnings to ``warn``) before they are written to
    ``out`` (default: eval-probe.json beside the samples), so a failed write loses nothing."""
    if samples is None:
        samples = latest_samples()
        say(f"samples: {samples} (the newest under runs/)")
    recipe, recipe_path = samples_recipe(samples)
    if data is None:
        if recipe is None:
            raise SpherearError(
                f"no dataset for {samples}: it is not in a run folder with a recipe.toml; pass "
                "--data (a folder made by `spherear prepare-data`)"
            )
        data = Path(recipe.data.prepared)
        say(f"data: {data} (data.prepared in {recipe_path})")
    out = out or samples.parent / "eval-probe.json"
    check_output(out, "--json", folder=False)  # before the work, not after
    check_output_file(out, "--json", [samples, samples.parent / "labels.npy", data])
    NpzImages(samples)  # an empty or damaged file stops here, before a probe is trained
    sweep(out.parent, recursive=False)
    report = evaluate(samples, data, flip_invariant=recipe is not None and recipe.augment.hflip)
    say(format_table(report))
    for warning in report["warnings"]:
        warn(warning)
    write_json(out, report, "eval-probe/report")
    say(f"wrote {out}")
    return out


def format_table(report: dict) -> str:
    """The numbers as an aligned table: overall, per class, then what they came from."""
    m, p = report["metrics"], report["probe"]
    how = "reused" if p["reused"] else f"trained in {p['train_seconds']:.0f} s"
    lines = [
        f"probe class-consistency  {m['probe_class_consistency']:8.4f}  "
        f"(chance {report['chance']:.4f})",
        f"FD_probe                 {m['FD_probe']:8.4f}  (not FID)",
        f"probe held-out accuracy  {m['probe_held_out_accuracy']:8.4f}  (real images)",
        "",
        f"{'class':<24} {'samples':>7}  {'consistency':>11}  {'held-out':>8}  {'accuracy':>8}",
    ]

    def number(value: float | None, width: int) -> str:
        return f"{value:{width}.4f}" if value is not None else f"{'-':>{width}}"

    lines += [
        f"{name[:24]:<24} {c['samples']:>7}  {number(c['class_consistency'], 11)}  "
        f"{c['held_out_images']:>8}  {number(c['held_out_accuracy'], 8)}"
        for name, c in report["per_class"].items()
    ]
    lines += [
        "",
        f"samples    {report['samples']} ({report['num_samples']} images)",
        f"reference  {report['reference']}",
        f"probe      {p['path']} (sha256 {p['fingerprint'][:16]}..., {how})",
    ]
    return "\n".join(lines)
