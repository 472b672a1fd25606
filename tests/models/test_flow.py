"""Rectified flow for one token: the loss worked out by hand, the samplers against a flow
whose exact answer is known, and the steps spread over the tokens."""

import pytest
import torch

from spherear.models.flow import (
    SAMPLERS,
    evaluations,
    flow_matching_loss,
    run_sampler,
    sample_heun,
    sample_ode,
    sample_sde,
    sampler_times,
    token_steps,
)


def _gaussian_flow(m: float, s: float):
    """Exact rectified-flow velocity for data ~ N(m, s^2), v = E[x1 - noise | x_t], and the
    exact end point of its ODE from noise z."""

    def velocity(x, t):
        var = (1 - t) ** 2 + t**2 * s**2
        return m + (t * s**2 - (1 - t)) / var * (x - t * m)

    return velocity, lambda z: m + s * z


def test_the_loss_is_the_squared_error_of_the_velocity_at_x_t():
    target, noise, t = torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, -1.0]]), torch.tensor([0.25])
    # x_t = 0.75 [3, -1] + 0.25 [1, 2] = [2.5, -0.25]; the true velocity x - noise = [-2, 3];
    # a "model" answering x_t misses by [4.5, -3.25]: (20.25 + 10.5625) / 2
    loss = flow_matching_loss(lambda x, t: x, target, t, noise)
    assert loss.item() == 15.40625


@pytest.mark.parametrize("sampler", ["sde", "ode"])
def test_samplers_reach_the_data_distribution(sampler):
    torch.manual_seed(0)
    m, s = 1.5, 0.5
    noise = torch.randn(20_000, 1)
    v, _ = _gaussian_flow(m, s)
    x = sample_sde(v, noise, steps=100) if sampler == "sde" else sample_ode(v, noise, steps=100)
    assert x.mean().item() == pytest.approx(m, abs=0.02)
    assert x.std().item() == pytest.approx(s, rel=0.05)


def test_sde_time_grid_and_final_euler_step():
    seen = []
    c = torch.full((1, 2), 0.5)

    def velocity(x, t):
        seen.append((t, x.clone()))
        return c.expand_as(x)

    out = sample_sde(velocity, torch.zeros(1, 2), steps=25, generator=torch.Generator())
    times = [t for t, _ in seen]
    assert len(times) == 26
    assert times[:-1] == pytest.approx([i * 0.96 / 25 for i in range(25)])
    assert times[-1] == pytest.approx(0.96)
    torch.testing.assert_close(out, seen[-1][1] + 0.04 * c)


def test_heun_is_second_order_and_beats_euler_with_the_same_evaluations():
    velocity, exact = _gaussian_flow(1.5, 0.3)
    z = torch.linspace(-3, 3, 101)[:, None].double()
    error = {n: (sample_heun(velocity, z, n).double() - exact(z)).abs().max().item()
             for n in (8, 16, 32, 64)}  # fmt: skip
    assert 3.0 < error[16] / error[32] < 5.0 and 3.0 < error[32] / error[64] < 5.0  # ~2^2
    euler = (sample_ode(velocity, z, 16).double() - exact(z)).abs().max().item()
    assert evaluations("heun", 8) == evaluations("ode", 16) == 16
    assert error[8] < euler / 5
    with pytest.raises(ValueError, match="unknown sampler 'euler'; use one of sde, ode, heun"):
        run_sampler("euler", velocity, z, 4)


@pytest.mark.parametrize("sampler, steps, tol", [("ode", 400, 1e-2), ("heun", 32, 1e-3)])
def test_temperature_narrows_an_ode_sample_around_the_data_mean(sampler, steps, tol):
    # the exact flow of N(m, s^2) carries noise z to m + s z: from 0.5 z it ends at m + 0.5 s z
    velocity, exact = _gaussian_flow(1.5, 0.5)
    z = torch.linspace(-3, 3, 61)[:, None].double()
    out = run_sampler(sampler, velocity, z, steps, temperature=0.5).double()
    assert (out - exact(0.5 * z)).abs().max().item() < tol
    assert out.std().item() == pytest.approx(0.5 * exact(z).std().item(), rel=0.01)


def test_the_sde_at_temperature_zero_ignores_its_noise_and_lands_on_the_mean():
    velocity, _ = _gaussian_flow(1.5, 0.5)
    generators = [torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)]
    ends = [run_sampler("sde", velocity, torch.randn(50, 1, generator=g), 100, g, temperature=0.0)
            for g in generators]  # fmt: skip
    assert (ends[0] - ends[1]).abs().max().item() == 0.0
    assert (ends[0] - 1.5).abs().max().item() < 1e-2  # the ODE's path from 0 ends at m + s 0
    torch.manual_seed(0)
    half = run_sampler("sde", velocity, torch.randn(20_000, 1), 100, temperature=0.5)
    assert 0.1 < half.std().item() < 0.4  # narrower than the data's 0.5, wider than nothing


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("steps", [1, 3, 7, 100])
def test_sampler_times_are_every_time_the_sampler_asks_for(sampler, steps):
    seen = []

    def velocity(x, t):
        seen.append(t)
        return torch.zeros_like(x)

    run_sampler(sampler, velocity, torch.zeros(1, 2), steps, torch.Generator())
    assert len(seen) == evaluations(sampler, steps)
    assert sorted(set(seen)) == sampler_times(sampler, steps)  # exact floats: used as keys


def test_step_annealing_falls_linearly_from_the_first_to_the_last_token():
    steps = token_steps(50, 5, 256)
    assert steps[0] == 50 and steps[-1] == 5 and len(steps) == 256
    assert steps[128] == round(50 - 45 * 128 / 255) == 27  # 27.41 by hand
    assert all(a >= b for a, b in zip(steps, steps[1:], strict=False))
    assert token_steps(100, 0, 4) == [100] * 4
    assert sum(evaluations("sde", s) for s in steps) / 256 == pytest.approx(28.5, abs=0.1)
