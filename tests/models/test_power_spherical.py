import math

import mpmath as mp
import pytest
import torch
from power_spherical import HypersphericalUniform
from power_spherical import PowerSpherical as ReferencePowerSpherical

from spherear.models.power_spherical import PowerSpherical, log_sphere_area

KAPPAS = [1e-3, 0.1, 1.0, 10.0, 100.0, 1e4]


def _random_mu(n: int, m: int) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(n, m, dtype=torch.float64), dim=-1)


@pytest.mark.parametrize("m", [3, 16])
def test_entropy_and_kl_match_reference_package(m):
    mu = _random_mu(len(KAPPAS), m)
    kappa = torch.tensor(KAPPAS, dtype=torch.float64)
    ours = PowerSpherical(mu.float(), kappa.float())
    ref = ReferencePowerSpherical(mu, kappa)
    ref_kl = torch.distributions.kl_divergence(ref, HypersphericalUniform(m, dtype=torch.float64))
    torch.testing.assert_close(ours.entropy().double(), ref.entropy(), rtol=1e-5, atol=0)
    # the package loses ~1e-7 absolute to cancellation at kappa ~ 1e-3 (see the mpmath test)
    torch.testing.assert_close(ours.kl_to_uniform().double(), ref_kl, rtol=1e-5, atol=5e-7)
    big = ref_kl > 1e-2  # where the package's own ~2e-7 error is below 1e-5 relative
    torch.testing.assert_close(ours.kl_to_uniform().double()[big], ref_kl[big], rtol=1e-5, atol=0)


def _exact_kl(kappa: float, m: int) -> float:
    mp.mp.dps = 50
    a, b = mp.mpf(kappa) + mp.mpf(m - 1) / 2, mp.mpf(m - 1) / 2
    log_norm = -((a + b) * mp.log(2) + b * mp.log(mp.pi) + mp.loggamma(a) - mp.loggamma(a + b))
    entropy = -(log_norm + kappa * (mp.log(2) + mp.digamma(a) - mp.digamma(a + b)))
    log_area = mp.log(2) + mp.mpf(m) / 2 * mp.log(mp.pi) - mp.loggamma(mp.mpf(m) / 2)
    return float(log_area - entropy)


@pytest.mark.parametrize("m", [3, 16])
def test_kl_is_exact_to_fp32_over_the_whole_kappa_range(m):
    kappa = torch.tensor(KAPPAS)
    ours = PowerSpherical(_random_mu(len(KAPPAS), m).float(), kappa).kl_to_uniform()
    exact = torch.tensor([_exact_kl(k, m) for k in kappa.double().tolist()])
    torch.testing.assert_close(ours.double(), exact.double(), rtol=1e-5, atol=0)


def test_kl_vanishes_as_kappa_goes_to_zero_and_grows_with_kappa():
    kappa = torch.tensor([1e-8, 1e-4, 1e-2, 1.0, 1e2, 1e4])
    kl = PowerSpherical(_random_mu(len(kappa), 16).float(), kappa).kl_to_uniform()
    assert kl[0].abs() < 1e-6
    assert (kl[1:] > kl[:-1]).all()
    assert (kl >= -1e-6).all()


@pytest.mark.parametrize("kappa", [0.5, 5.0, 50.0])
def test_monte_carlo_mean_cosine(kappa):
    n, m = 200_000, 16
    mu = _random_mu(1, m).float().expand(n, m)
    dist = PowerSpherical(mu, torch.full((n,), kappa))
    cos = (dist.rsample() * mu).sum(-1)
    expected = dist.mean_cosine[0]
    alpha, beta = kappa + (m - 1) / 2, (m - 1) / 2
    assert math.isclose(expected.item(), (alpha - beta) / (alpha + beta), rel_tol=1e-6)
    stderr = cos.std() / math.sqrt(n)
    assert (cos.mean() - expected).abs() < 4 * stderr


@pytest.mark.parametrize("kappa", [0.0, 1.0, 10.0])
def test_log_prob_integrates_to_one_on_s2(kappa):
    # midpoint rule in spherical coordinates: dA = sin(theta) dtheta dphi
    n = 600
    theta = (torch.arange(n, dtype=torch.float64) + 0.5) * math.pi / n
    phi = (torch.arange(2 * n, dtype=torch.float64) + 0.5) * math.pi / n
    th, ph = torch.meshgrid(theta, phi, indexing="ij")
    x = torch.stack([th.sin() * ph.cos(), th.sin() * ph.sin(), th.cos()], -1).reshape(-1, 3)
    mu = torch.nn.functional.normalize(torch.tensor([[0.3, -0.5, 0.8]]), dim=-1)
    dist = PowerSpherical(mu, torch.tensor([kappa]))
    density = dist.log_prob(x.float()).double().exp()
    integral = (density * th.sin().reshape(-1)).sum() * (math.pi / n) ** 2
    assert integral.item() == pytest.approx(1.0, abs=1e-3)
    assert dist.log_prob(mu).item() > dist.log_prob(-mu * 0.999).item() or kappa == 0.0


def test_uniform_log_density_is_minus_log_area():
    m = 16
    dist = PowerSpherical(_random_mu(4, m).float(), torch.zeros(4))
    x = torch.nn.functional.normalize(torch.randn(4, m), dim=-1)
    torch.testing.assert_close(dist.log_prob(x), torch.full((4,), -log_sphere_area(m)))


def test_stable_from_tiny_to_huge_kappa_with_gradients():
    kappa = torch.logspace(-3, 4, 15).requires_grad_()
    raw_mu = torch.randn(15, 16, requires_grad=True)
    mu = torch.nn.functional.normalize(raw_mu, dim=-1)
    dist = PowerSpherical(mu, kappa)
    z = dist.rsample()
    assert torch.isfinite(z).all()
    torch.testing.assert_close(z.norm(dim=-1), torch.ones(15), atol=1e-5, rtol=0)
    loss = (z * mu).sum() + dist.kl_to_uniform().sum() + dist.entropy().sum()
    loss.backward()
    assert torch.isfinite(kappa.grad).all() and torch.isfinite(raw_mu.grad).all()
    # concentrated samples sit on mu
    assert ((z * mu).sum(-1)[-1] > 0.99).item()


def test_fp32_under_bf16_autocast():
    mu = _random_mu(6, 16).float()
    kappa = torch.tensor(KAPPAS)
    plain = PowerSpherical(mu, kappa)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = PowerSpherical(mu.bfloat16(), kappa.bfloat16())
        x = torch.nn.functional.normalize(torch.randn(6, 16), dim=-1).bfloat16()
        lp, kl, z = auto.log_prob(x), auto.kl_to_uniform(), auto.rsample()
    assert lp.dtype == kl.dtype == z.dtype == torch.float32
    torch.testing.assert_close(kl, PowerSpherical(mu.bfloat16(), kappa.bfloat16()).kl_to_uniform())
    assert torch.isfinite(plain.kl_to_uniform()).all()


def test_seeded_sample_is_reproducible_and_has_the_right_mean_cosine():
    n, m = 100_000, 16
    mu = _random_mu(1, m).float().expand(n, m)
    dist = PowerSpherical(mu, torch.full((n,), 5.0))
    a = dist.sample(torch.Generator().manual_seed(3))
    b = dist.sample(torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    cos = (a * mu).sum(-1)
    assert (cos.mean() - dist.mean_cosine[0]).abs() < 4 * cos.std() / math.sqrt(n)
    torch.testing.assert_close(a.norm(dim=-1), torch.ones(n))


def test_one_generator_per_row_draws_each_row_as_if_alone():
    mu, kappa = _random_mu(24, 16).float().view(3, 8, 16), torch.rand(3, 8) * 1e4
    rows = PowerSpherical(mu, kappa).sample([torch.Generator().manual_seed(j) for j in range(3)])
    for j in range(3):
        alone = PowerSpherical(mu[j], kappa[j]).sample(torch.Generator().manual_seed(j))
        assert torch.equal(rows[j], alone)
