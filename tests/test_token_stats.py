"""Token-norm figures: running sums merged over chunks against numpy on all tokens at once."""

import numpy as np
import torch

from spherear.token_stats import merge, summarise, token_sums


def test_summaries_of_merged_chunks_equal_numpy_on_every_token():
    tokens = torch.randn(10, 6, 4) * torch.tensor([1.0, 2.0, 0.5, 3.0])
    summary = summarise(merge(token_sums(chunk) for chunk in tokens.split([3, 3, 4])))
    t = tokens.double().numpy()
    norms = np.linalg.norm(t, axis=-1)
    assert summary["images"] == 10
    assert np.isclose(summary["norm"]["mean"], norms.mean())
    assert np.isclose(summary["norm"]["std"], norms.std())
    assert np.isclose(summary["norm"]["min"], norms.min())
    assert np.isclose(summary["norm"]["max"], norms.max())
    assert np.allclose(summary["norm_by_position"]["mean"], norms.mean(0))
    assert np.allclose(summary["norm_by_position"]["std"], norms.std(0))
    assert np.allclose(summary["dim_variance"], t.reshape(-1, 4).var(0))


def test_tokens_on_a_sphere_have_that_norm_and_no_spread():
    tokens = torch.nn.functional.normalize(torch.randn(5, 8, 16), dim=-1) * 4
    norm = summarise(token_sums(tokens))["norm"]
    assert abs(norm["mean"] - 4) < 1e-6 and norm["std"] < 1e-6
    assert abs(norm["min"] - 4) < 1e-6 and abs(norm["max"] - 4) < 1e-6
