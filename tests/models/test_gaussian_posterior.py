"""The Gaussian posterior of the paper's KL-16 baseline: its KL and its draws, against
numbers worked out by hand and against torch.distributions."""

import math

import torch

from spherear.models.vae import GaussianPosterior


def test_kl_to_the_standard_normal_by_hand():
    # one token of two dimensions: mean (1, 0), variances (1, 1/4)
    # KL = 1/2 [(1 + 1 - 1 - 0) + (0 + 1/4 - 1 - log 1/4)] = 1/2 (1 + 0.6362944) = 0.8181472
    posterior = GaussianPosterior(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, math.log(0.25)]]))
    assert torch.allclose(posterior.kl(), torch.tensor([0.8181472]), atol=1e-6)
    # and a second token that is N(0, I) itself: no information, KL 0
    zero = GaussianPosterior(torch.zeros(1, 2), torch.zeros(1, 2))
    assert torch.allclose(zero.kl(), torch.zeros(1), atol=1e-7)


def test_kl_agrees_with_torch_distributions():
    mean, logvar = torch.randn(3, 5, 8), torch.randn(3, 5, 8)
    ours = GaussianPosterior(mean, logvar).kl()
    q = torch.distributions.Normal(mean, torch.exp(0.5 * logvar))
    p = torch.distributions.Normal(torch.zeros_like(mean), torch.ones_like(mean))
    torch.testing.assert_close(ours, torch.distributions.kl_divergence(q, p).sum(-1))


def test_draws_have_the_posteriors_moments_and_depend_on_their_row_alone():
    n = 4000
    mean, logvar = torch.tensor([1.0, -2.0]), torch.tensor([0.0, math.log(0.25)])
    posterior = GaussianPosterior(mean.expand(n, 1, 2), logvar.expand(n, 1, 2))
    draws = posterior.draw([torch.Generator().manual_seed(i) for i in range(n)])[:, 0]
    # standard errors: 1 / sqrt(n) = 0.016 for the mean of the first coordinate
    assert (draws.mean(0) - mean).abs().max() < 4 / math.sqrt(n)
    assert (draws.std(0) - torch.tensor([1.0, 0.5])).abs().max() < 0.05
    # row j is mean + std * (the first normals of generator j), whatever its neighbours
    eps = torch.randn((1, 2), generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(draws[7], (mean + torch.tensor([1.0, 0.5]) * eps)[0])


def test_reparameterised_sample_carries_gradients_to_mean_and_logvar():
    mean = torch.zeros(2, 3, requires_grad=True)
    logvar = torch.zeros(2, 3, requires_grad=True)
    GaussianPosterior(mean, logvar).sample().sum().backward()
    assert torch.equal(mean.grad, torch.ones(2, 3)) and logvar.grad.abs().sum() > 0
