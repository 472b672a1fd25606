"""Feature extraction with seeded random Inception weights (the real ones cannot be
downloaded here): equal to torch-fidelity's own, independent of the batch size, cached."""

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.utils import get_featuresdict_from_dataset

from spherear.data.prepare import prepare_dataset
from spherear.errors import SpherearError
from spherear.eval.features import (
    INCEPTION_FILE,
    InceptionFeatures,
    TimmFeatures,
    extract,
    features,
    random_inception_weights,
    resolve_inception_weights,
    streamed_statistics,
)
from spherear.eval.metrics import feature_statistics, frechet_distance
from spherear.eval.npz import NpzImages, PreparedReference, file_sha256


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return random_inception_weights(tmp_path_factory.mktemp("w") / "inception.pth", seed=0)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> NpzImages:
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("npz") / "samples.npz"
    np.savez(path, rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8))
    return NpzImages(path)


@pytest.fixture(scope="module")
def ours(weights, images) -> dict[str, np.ndarray]:
    return extract(images, InceptionFeatures(weights), Accelerator(), batch_size=4)


class _Images(torch.utils.data.Dataset):
    """torch-fidelity's input: a Dataset of 3 x H x W uint8 tensors."""

    def __init__(self, images: NpzImages):
        self.chw = torch.from_numpy(images.read(0, len(images))).permute(0, 3, 1, 2)

    def __len__(self) -> int:
        return len(self.chw)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.chw[i]


@pytest.fixture(scope="module")
def theirs(weights, images) -> dict[str, np.ndarray]:
    """torch-fidelity's own pipeline, plus Mixed_6d.branch1x1 taken by a hook."""
    net = FeatureExtractorInceptionV3(
        "inception-v3-compat", ["2048", "logits_unbiased"], feature_extractor_weights_path=weights
    )
    maps = []
    net.Mixed_6d.branch1x1.register_forward_hook(lambda m, i, out: maps.append(out))
    out = get_featuresdict_from_dataset(_Images(images), net, 4, False, True, False)
    return {"2048": out["2048"], "logits_unbiased": out["logits_unbiased"], "maps": maps[0]}


def _relative(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_features_equal_torch_fidelity(ours, theirs):
    assert ours["pool"].shape == (4, 2048) and ours["logits"].shape == (4, 1008)
    assert ours["pool"].std() > 0.01  # the random weights keep the activations alive
    assert _relative(ours["pool"], theirs["2048"]) < 1e-6
    assert _relative(ours["logits"], theirs["logits_unbiased"]) < 1e-6
    channels_last = theirs["maps"][:, :7].permute(0, 2, 3, 1).reshape(4, -1)
    assert _relative(ours["spatial"], channels_last) < 1e-6


def test_fid_agrees_with_torch_fidelity(ours, theirs):
    ours_fid = frechet_distance(
        *feature_statistics(ours["pool"][:2]), *feature_statistics(ours["pool"][2:])
    )
    stats = [fid_features_to_statistics(theirs["2048"][s]) for s in (slice(0, 2), slice(2, 4))]
    theirs_fid = fid_statistics_to_metric(*stats, verbose=False)["frechet_inception_distance"]
    assert ours_fid == pytest.approx(theirs_fid, rel=1e-5)


def test_features_do_not_depend_on_batch_size_and_are_cached(
    weights, images, ours, tmp_path, monkeypatch
):
    monkeypatch.setenv("SPHEREAR_CACHE", str(tmp_path))
    net = InceptionFeatures(weights)
    other = features(images, net, Accelerator(), batch_size=3)
    for k in ("pool", "logits", "spatial"):
        assert _relative(other[k], ours[k]) < 1e-5
    cached = list((tmp_path / "features").glob("*.npz"))
    assert len(cached) == 1 and file_sha256(images.path)[:32] in cached[0].name
    assert file_sha256(weights)[:16] in cached[0].name
    again = features(images, net, Accelerator(), batch_size=1)  # from the cache
    assert all(np.array_equal(again[k], other[k]) for k in other)


def test_missing_weights_offline_is_one_line_naming_file_and_place(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SpherearError) as e:
        resolve_inception_weights(None)
    message = str(e.value)
    assert "\n" not in message and INCEPTION_FILE in message
    assert str(tmp_path / "hub" / "checkpoints") in message and "https://" in message


def test_a_file_with_other_keys_is_refused_in_one_line(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(1)}, path)
    with pytest.raises(SpherearError, match="key set") as e:
        InceptionFeatures(path)
    assert "\n" not in str(e.value)


@pytest.fixture(scope="module")
def vit(tmp_path_factory) -> TimmFeatures:
    """A small timm backbone with random weights from a local file (no hub)."""
    import timm
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("vit") / "vit.safetensors"
    save_file(timm.create_model("vit_tiny_patch16_224").state_dict(), path)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        return TimmFeatures(f"vit_tiny_patch16_224={path}")


def test_timm_backbone_from_local_weights_is_labelled_fd(vit, images):
    assert vit.label == "FD_vit_tiny_patch16_224" and "FID" not in vit.label
    out = extract(images, vit, Accelerator(), batch_size=4)
    assert out["pool"].shape == (4, 192) and np.isfinite(out["pool"]).all()


def test_prepared_dataset_statistics_stream_in_chunks(vit, tmp_path, monkeypatch):
    monkeypatch.setenv("SPHEREAR_CACHE", str(tmp_path / "cache"))
    prepare_dataset("synthetic", tmp_path / "data", 32, num_images=5, progress=False)
    ref = PreparedReference(tmp_path / "data", 32)
    assert ref.read(1, 3).shape == (2, 32, 32, 3) and ref.read(1, 3).dtype == np.uint8
    full = extract(ref, vit, Accelerator(), batch_size=5)["pool"]
    streamed = streamed_statistics(ref, vit, Accelerator(), batch_size=2, chunk=2, keep=3)
    mu, sigma = feature_statistics(full)
    np.testing.assert_allclose(streamed["mu"], mu, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(streamed["sigma"], sigma, rtol=1e-4, atol=1e-6)
    # precision/recall's 3 of the 5 (one per class): a seeded choice, each image once
    rows = [int(np.abs(full - row).max(1).argmin()) for row in streamed["pool"]]
    assert len(set(rows)) == 3
    np.testing.assert_allclose(streamed["pool"], full[rows], rtol=1e-5, atol=1e-6)
