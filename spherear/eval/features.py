"""Feature extraction for ``eval-fid``: the 2015-12-05 Inception graph (torch-fidelity's
port: TF1 bilinear resize to 299, BatchNorm eps 1e-3, the TF pooling quirks) and, as an
option, any timm backbone for Fréchet distances in other feature spaces.

Extraction is split over Accelerate processes, gathered in file order and cached per input
(content hash x weights hash), so the features do not depend on the number of processes
or the batch size.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

from spherear.errors import SpherearError
from spherear.eval.metrics import RunningStatistics, spatial_features
from spherear.eval.npz import file_sha256
from spherear.files import atomic_write, cache_dir, load_torch_file, note, sweep

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_SHA256_PREFIX = "6726825d"


class ImageSource(Protocol):
    def __len__(self) -> int: ...
    def read(self, start: int, stop: int) -> np.ndarray: ...
    def cache_key(self) -> str: ...


def default_inception_weights() -> Path:
    """Where torch-fidelity's own download lands: torch hub's checkpoint folder."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def resolve_inception_weights(path: str | Path | None) -> Path:
    """``path`` if given, else the standard cache location, downloaded there when online."""
    if path:
        if not Path(path).is_file():
            raise SpherearError(f"{path}: no such Inception weights file (--inception-weights)")
        return Path(path)
    target = default_inception_weights()
    if target.is_file():
        return target
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    missing = (
        f"Inception weights {INCEPTION_FILE} not found: download {URL_INCEPTION_V3} and put it "
        f"at {target}, or pass --inception-weights FILE (or set eval.inception_weights)"
    )
    if _offline():
        raise SpherearError(missing)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(URL_INCEPTION_V3, str(target), INCEPTION_SHA256_PREFIX)
    except (OSError, RuntimeError):  # no network, or a download that fails its hash
        raise SpherearError(missing) from None
    return target


def _inception_network(features: list[str], state: dict | None = None):
    """torch-fidelity's network, loaded (strictly) with ``state``, or with untouched initial
    weights (the key set and shapes). torch-fidelity unpickles its weights file with
    weights_only=False, so it never sees the user's file: only an empty dict of ours, and
    the tensors already read safely are loaded afterwards."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class Network(FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, strict=True, assign=False):
            return None if state is None else super().load_state_dict(state, strict=strict)

    empty = io.BytesIO()
    torch.save({}, empty)
    empty.seek(0)
    with torch.random.fork_rng(devices=[]):  # building it must not move the caller's RNG
        return Network("inception-v3-compat", features, feature_extractor_weights_path=empty)


def random_inception_weights(path: str | Path, seed: int = 0) -> Path:
    """Write a seeded random state dict with the real Inception key set (He-normal convs,
    identity BatchNorm, so activations stay alive): for offline tests and benchmarks,
    where the real weights cannot be downloaded."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, t in _inception_network(["2048"]).state_dict().items():
        if name.endswith("conv.weight"):
            value = torch.randn(t.shape, generator=g) * math.sqrt(2 / t[0].numel())
        elif name == "fc.weight":
            value = torch.randn(t.shape, generator=g) / math.sqrt(t.shape[1])
        elif name == "fc.bias":
            value = torch.randn(t.shape, generator=g)
        elif name.endswith(("bn.weight", "running_var")):
            value = torch.ones(t.shape)
        else:  # bn.bias, running_mean, num_batches_tracked
            value = torch.zeros_like(t)
        state[name] = value
    torch.save(state, path)
    return Path(path)


class Backbone(Protocol):
    tag: str
    label: str
    dims: dict[str, int]

    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]: ...


class InceptionFeatures(nn.Module):
    """uint8 N x H x W x 3 images -> ``pool`` (2048), ``logits`` (1008, without the
    classifier bias, for IS) and ``spatial`` (2023, for sFID) features."""

    label = "FID"
    dims = {"pool": 2048, "logits": 1008, "spatial": 2023}

    def __init__(self, weights: str | Path):
        super().__init__()
        self.weights = Path(weights)
        self.sha256 = file_sha256(weights)
        self.tag = f"inception-2015-12-05-{self.sha256[:16]}"
        state = load_torch_file(weights, what="PyTorch state dict")
        if not isinstance(state, dict):
            raise SpherearError(f"{weights}: not a state dict of {INCEPTION_FILE}")
        broken = next(
            (k for k, v in state.items()
             if isinstance(v, torch.Tensor) and v.is_floating_point() and not v.isfinite().all()),
            None,
        )  # fmt: skip
        if broken is not None:
            raise SpherearError(
                f"{weights}: '{broken}' holds NaN or infinite values; download "
                f"{INCEPTION_FILE} again"
            )
        try:
            self.net = _inception_network(["2048", "logits_unbiased"], state)
        except RuntimeError as e:
            lines = str(e).splitlines()
            first = (lines[1] if len(lines) > 1 else lines[0]).strip()[:160]
            raise SpherearError(
                f"{weights}: not the key set of torch-fidelity's {INCEPTION_FILE} "
                f"(pytorch-fid's pt_inception file uses other names): {first}"
            ) from None
        self._maps: torch.Tensor | None = None
        self.net.Mixed_6d.branch1x1.register_forward_hook(self._keep_maps)

    def _keep_maps(self, module: nn.Module, inputs, output: torch.Tensor) -> None:
        self._maps = output

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        pool, logits = self.net(images.permute(0, 3, 1, 2))
        spatial = spatial_features(self._maps).float()
        self._maps = None
        return {"pool": pool, "logits": logits, "spatial": spatial}


class TimmFeatures(nn.Module):
    """A timm backbone's pooled features (``num_classes=0``), with the model's own input
    size and normalisation; for a Fréchet distance labelled ``FD_<model>``, never FID."""

    def __init__(self, spec: str):
        super().__init__()
        import timm

        name, _, weights = spec.partition("=")
        overlay = {"file": weights} if weights else None
        if weights and not Path(weights).is_file():
            raise SpherearError(f"{weights}: no such weights file for timm:{name}")
        if weights and not weights.endswith(".safetensors"):
            load_torch_file(weights, what=f"weights file for timm:{name}")  # refuse code first
        try:
            self.model = timm.create_model(
                name, pretrained=True, num_classes=0, pretrained_cfg_overlay=overlay
            )
        except RuntimeError as e:
            if "Unknown model" in str(e):
                raise SpherearError(f"timm:{name}: not a timm model name") from None
            raise SpherearError(f"timm:{name}: cannot load the weights ({e})") from None
        except OSError:
            raise SpherearError(
                f"timm:{name}: weights not available offline; pass --features "
                f"timm:{name}=/path/to/weights.safetensors"
            ) from None
        self.model.eval().requires_grad_(False)
        cfg = timm.data.resolve_data_config({}, model=self.model)
        self.size = tuple(cfg["input_size"][1:])
        # timm names PIL filters; torch's interpolate knows these two of them
        self.mode = "bilinear" if cfg["interpolation"] == "bilinear" else "bicubic"
        self.register_buffer("mean", torch.tensor(cfg["mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg["std"]).view(1, 3, 1, 1), persistent=False)
        identity = file_sha256(weights) if weights else f"hub-{name}"
        self.arch = name.split(".")[0]
        self.label = f"FD_{self.arch}"
        self.tag = f"timm-{name}-{identity[:16]}"
        self.dims = {"pool": self.model.num_features}
        self.weights = weights or f"hub:{name}"

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = images.permute(0, 3, 1, 2).float() / 255
        if x.shape[-2:] != self.size:
            x = nn.functional.interpolate(x, self.size, mode=self.mode, antialias=True)
        x = (x.clamp(0, 1) - self.mean) / self.std
        return {"pool": self.model(x).float()}


@contextlib.contextmanager
def _tf32_off() -> Iterator[None]:
    """cuDNN convolutions default to TF32 on Ampere and later, which moves FID visibly."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def extract(
    source: ImageSource,
    backbone: Backbone,
    accelerator,
    batch_size: int = 50,
    start: int = 0,
    stop: int | None = None,
    desc: str = "features",
) -> dict[str, np.ndarray] | None:
    """Features of images ``start..stop``: each process takes a contiguous share, the shares
    are gathered in order and the padding of the last one dropped. Main process only."""
    from tqdm import tqdm

    stop = len(source) if stop is None else stop
    world, device = accelerator.num_processes, accelerator.device
    per = math.ceil((stop - start) / world)
    lo = min(start + accelerator.process_index * per, stop)
    hi = min(lo + per, stop)
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in backbone.dims}
    bar = tqdm(total=stop - start, unit="img", desc=desc, disable=not accelerator.is_main_process)
    with torch.no_grad(), _tf32_off():
        for a in range(lo, hi, batch_size):
            b = min(a + batch_size, hi)
            out = backbone(torch.from_numpy(source.read(a, b)).to(device))
            for k in parts:
                parts[k].append(out[k].float())
            bar.update((b - a) * world)
    bar.close()
    features = {}
    for k, dim in backbone.dims.items():
        local = torch.cat(parts[k]) if parts[k] else torch.zeros(0, dim, device=device)
        padded = torch.cat([local, torch.zeros(per - len(local), dim, device=device)])
        features[k] = accelerator.gather(padded)[: stop - start].cpu().numpy()
    return features if accelerator.is_main_process else None


def _cached(path: Path, accelerator, compute) -> dict[str, np.ndarray] | None:
    """``compute()`` (run by every process) unless the main process finds ``path``; the
    result is written by the main process under a temporary name, then renamed."""
    from accelerate.utils import broadcast_object_list

    cached = _read_cache(path) if accelerator.is_main_process else None
    if broadcast_object_list([cached is not None])[0]:
        return cached
    result = compute()
    if accelerator.is_main_process:

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, **result)

        sweep(path.parent)
        atomic_write(path, write, "features/cache")
    return result


def _read_cache(path: Path) -> dict[str, np.ndarray] | None:
    """A cached result, or None; a damaged one (a truncated copy) is deleted and
    computed again."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            return dict(f)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        note(f"{path}: damaged cache file ({type(e).__name__}); computing it again")
        path.unlink(missing_ok=True)
        return None


def _cache_path(source: ImageSource, backbone: Backbone, kind: str, accelerator) -> Path:
    key = source.cache_key() if accelerator.is_main_process else "unused"
    return cache_dir() / f"{backbone.tag}-{kind}-{key[:32]}.npz"


def features(
    source: ImageSource, backbone: Backbone, accelerator, batch_size: int = 50, desc: str = ""
) -> dict[str, np.ndarray] | None:
    """All features of ``source``, from the cache when this file met these weights before."""
    path = _cache_path(source, backbone, "features", accelerator)
    return _cached(
        path, accelerator, lambda: extract(source, backbone, accelerator, batch_size, desc=desc)
    )


def streamed_statistics(
    source: ImageSource,
    backbone: Backbone,
    accelerator,
    batch_size: int = 50,
    chunk: int = 50_000,
    keep: int = 10_000,
) -> dict[str, np.ndarray] | None:
    """Statistics of a source too large to hold its features (a prepared training set):
    ``mu``/``sigma`` (pool), ``mu_s``/``sigma_s`` (spatial, when the backbone has them) and
    the pool features of ``keep`` images (``reference_subset``), for precision/recall (as
    ADM's 10,000-image reference batch)."""

    def compute() -> dict[str, np.ndarray] | None:
        n = len(source)
        subset = reference_subset(source, keep)
        running = {k: RunningStatistics() for k in ("pool", "spatial") if k in backbone.dims}
        kept = []
        for lo in range(0, n, chunk):
            hi = min(lo + chunk, n)
            f = extract(source, backbone, accelerator, batch_size, lo, hi, desc="reference")
            if f is None:
                continue
            for k, stats in running.items():
                stats.add(f[k])
            kept.append(f["pool"][subset[(subset >= lo) & (subset < hi)] - lo])
        if not accelerator.is_main_process:
            return None
        out = {"pool": np.concatenate(kept)}
        out["mu"], out["sigma"] = running["pool"].result()
        if "spatial" in running:
            out["mu_s"], out["sigma_s"] = running["spatial"].result()
        return out

    # "stratified": older caches kept the first images of a class-ordered dataset
    path = _cache_path(source, backbone, "stats-stratified", accelerator)
    return _cached(path, accelerator, compute)


def reference_subset(source: ImageSource, keep: int) -> np.ndarray:
    """Sorted indices of ``keep`` images of ``source`` (all, if fewer): a seeded
    class-stratified choice when it knows its labels (a prepared dataset), else evenly
    spaced."""
    from spherear.data.splits import stratified_choice

    n = len(source)
    if keep >= n:
        return np.arange(n)
    if hasattr(source, "labels"):
        return np.sort(stratified_choice(source.labels(), keep, seed=0))
    return np.linspace(0, n - 1, keep).round().astype(np.int64)
