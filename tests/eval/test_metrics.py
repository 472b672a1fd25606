"""The ADM metrics on hand-made features: checked against scipy, closed forms and brute force."""

import numpy as np
import pytest
import scipy.linalg
import torch

from spherear.eval.metrics import (
    RunningStatistics,
    feature_statistics,
    frechet_distance,
    inception_score,
    precision_recall,
    spatial_features,
)


def _random_statistics(rng: np.random.Generator, dim: int, n: int, shift: float = 0.0):
    x = rng.standard_normal((n, dim)) @ rng.standard_normal((dim, dim)) / np.sqrt(dim) + shift
    return feature_statistics(x)


def test_frechet_distance_matches_float64_scipy_sqrtm():
    rng = np.random.default_rng(0)
    mu1, s1 = _random_statistics(rng, 48, 300)
    mu2, s2 = _random_statistics(rng, 48, 200, shift=0.3)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_of_identical_statistics_is_zero():
    mu, sigma = _random_statistics(np.random.default_rng(1), 64, 40)  # rank-deficient
    # the zero eigenvalues of a rank-deficient S S come out as +-1e-15, whose roots add up
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-6 * np.trace(sigma)


def test_equal_covariances_give_the_squared_mean_distance():
    rng = np.random.default_rng(2)
    mu1, sigma = _random_statistics(rng, 32, 500)
    mu2 = mu1 + rng.standard_normal(32)
    dmu2 = float(np.sum((mu1 - mu2) ** 2))
    assert frechet_distance(mu1, sigma, mu2, sigma) == pytest.approx(dmu2, rel=1e-8)


def test_frechet_distance_refuses_mismatched_statistics():
    with pytest.raises(ValueError, match="do not match"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_statistics_are_float64_and_running_chunks_agree():
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((103, 16)) + 1000).astype(np.float32)  # large offset
    mu, sigma = feature_statistics(x)
    assert mu.dtype == sigma.dtype == np.float64
    np.testing.assert_allclose(sigma, np.cov(x.astype(np.float64), rowvar=False), rtol=1e-12)
    running = RunningStatistics()
    for chunk in np.array_split(x, 4):
        running.add(chunk)
    mu_r, sigma_r = running.result()
    np.testing.assert_allclose(mu_r, mu, rtol=1e-12)
    np.testing.assert_allclose(sigma_r, sigma, rtol=1e-9, atol=1e-12)


def test_inception_score_of_one_hot_predictions_over_k_classes_is_k():
    k = 7
    logits = 200.0 * np.eye(k)[np.arange(70) % k]  # softmax underflows to exact one-hots
    assert inception_score(logits) == pytest.approx(k, rel=1e-12)
    assert inception_score(np.zeros((50, 1008))) == pytest.approx(1.0, abs=1e-12)


def test_inception_score_splits_in_file_order():
    # 4 images of class 0, then 4 of class 1: each split of 4 is one class (score 1), one
    # split of 8 holds both (score 2); a shuffled split would land in between
    logits = 200.0 * np.eye(2)[[0, 0, 0, 0, 1, 1, 1, 1]]
    assert inception_score(logits, split_size=4) == pytest.approx(1.0, abs=1e-12)
    assert inception_score(logits, split_size=8) == pytest.approx(2.0, rel=1e-12)


def _brute_force_precision_recall(ref: np.ndarray, sam: np.ndarray, k: int = 3):
    def radii(x):
        d = ((x[:, None] - x[None]) ** 2).sum(-1)
        np.fill_diagonal(d, np.inf)  # a point is not its own neighbour
        return np.sort(d, axis=1)[:, k - 1]

    cross = ((sam[:, None] - ref[None]) ** 2).sum(-1)  # samples x reference
    precision = (cross <= radii(ref)[None]).any(axis=1).mean()
    recall = (cross <= radii(sam)[:, None]).any(axis=0).mean()
    return precision, recall


def test_precision_recall_match_brute_force_with_blocks():
    rng = np.random.default_rng(4)
    ref = rng.standard_normal((37, 6))
    sam = rng.standard_normal((29, 6)) * 1.3 + 0.4
    expected = _brute_force_precision_recall(ref, sam)
    assert 0 < expected[0] < 1 and 0 < expected[1] < 1  # a toy that can tell them apart
    assert precision_recall(ref, sam, block=8, half=False) == pytest.approx(expected, abs=1e-12)


def test_precision_recall_in_float16_blocks_like_adm():
    # small integers keep float16 distances exact, so ties resolve as in float64
    rng = np.random.default_rng(5)
    ref = rng.integers(0, 4, (40, 8)).astype(np.float32)
    sam = rng.integers(0, 5, (33, 8)).astype(np.float32)
    expected = _brute_force_precision_recall(ref, sam)
    assert precision_recall(ref, sam, block=16) == pytest.approx(expected, abs=1e-12)


def test_spatial_features_flatten_channels_last():
    maps = torch.randn(2, 192, 17, 17)
    flat = spatial_features(maps)
    assert flat.shape == (2, 17 * 17 * 7)
    n, c, h, w = 1, 5, 3, 11
    assert flat[n, (h * 17 + w) * 7 + c] == maps[n, c, h, w]
    assert torch.equal(flat.view(2, 17, 17, 7), maps[:, :7].permute(0, 2, 3, 1))
