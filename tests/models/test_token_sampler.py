"""The fast sampling loop against the paper's plain loop, the samplers, step annealing and
the compile fallback."""

import math
import warnings

import pytest
import torch

from spherear.config import SampleConfig
from spherear.models import build_ar, token_sampler
from spherear.models.flow import (
    SAMPLERS,
    evaluations,
    run_sampler,
    sample_heun,
    sample_ode,
    sampler_times,
    token_steps,
)
from spherear.models.reference_sampling import reference_sample


def _trained_like(ar):
    with torch.no_grad():  # a zero-initialised head would answer 0 whatever its inputs
        for p in ar.head.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return ar.eval()


def _head_outputs(ar, draw) -> list[torch.Tensor]:
    outputs = []
    handle = ar.head.final_layer.register_forward_hook(lambda m, a, out: outputs.append(out))
    tokens = draw()
    handle.remove()
    return tokens, outputs


@pytest.mark.parametrize("cfg, schedule", [(4.5, "linear"), (1.0, "linear"), (3.0, "constant")])
def test_the_fast_loop_equals_the_papers_plain_loop(tiny_recipe, cfg, schedule):
    ar = _trained_like(build_ar(tiny_recipe))
    settings = SampleConfig(cfg=cfg, cfg_schedule=schedule, steps=6, sampler="sde")
    labels = torch.tensor([1, 4, 7])

    def generators():
        return [torch.Generator().manual_seed(s) for s in (3, 4, 5)]

    fast, fast_v = _head_outputs(ar, lambda: ar.sample(labels, settings, generators()))
    slow, slow_v = _head_outputs(ar, lambda: reference_sample(ar, labels, settings, generators()))
    assert len(fast_v) == len(slow_v) == ar.num_tokens * (settings.steps + 1)
    assert max((a - b).abs().max().item() for a, b in zip(fast_v, slow_v, strict=True)) <= 1e-5
    assert (fast - slow).abs().max().item() <= 1e-5


def _gaussian_flow(m: float, s: float):
    """Exact velocity for data ~ N(m, s^2) and the exact end point of its ODE from noise z."""

    def velocity(x, t):
        var = (1 - t) ** 2 + t**2 * s**2
        return m + (t * s**2 - (1 - t)) / var * (x - t * m)

    return velocity, lambda z: m + s * z


def test_heun_is_second_order_and_beats_euler_with_the_same_evaluations():
    velocity, exact = _gaussian_flow(1.5, 0.3)
    z = torch.linspace(-3, 3, 101)[:, None].double()
    error = {n: (sample_heun(velocity, z, n).double() - exact(z)).abs().max().item()
             for n in (8, 16, 32, 64)}  # fmt: skip
    assert 3.0 < error[16] / error[32] < 5.0 and 3.0 < error[32] / error[64] < 5.0  # ~2^2
    euler = (sample_ode(velocity, z, 16).double() - exact(z)).abs().max().item()
    assert evaluations("heun", 8) == evaluations("ode", 16) == 16
    assert error[8] < euler / 5


def test_step_annealing_falls_linearly_from_the_first_to_the_last_token():
    steps = token_steps(50, 5, 256)
    assert steps[0] == 50 and steps[-1] == 5 and len(steps) == 256
    assert steps[128] == round(50 - 45 * 128 / 255) == 27  # 27.41 by hand
    assert all(a >= b for a, b in zip(steps, steps[1:], strict=False))
    assert token_steps(100, 0, 4) == [100] * 4
    assert sum(evaluations("sde", s) for s in steps) / 256 == pytest.approx(28.5, abs=0.1)


def test_annealed_sampling_runs_each_token_with_its_own_steps(tiny_recipe):
    ar = _trained_like(build_ar(tiny_recipe))
    settings = SampleConfig(cfg=3.0, steps=9, steps_last=2, sampler="heun")
    _, outputs = _head_outputs(ar, lambda: ar.sample(torch.tensor([2]), settings))
    expected = sum(evaluations("heun", s) for s in token_steps(9, 2, ar.num_tokens))
    assert len(outputs) == expected
    tokens = ar.sample(torch.tensor([2, 3]), settings)
    assert (tokens.norm(dim=-1) - math.sqrt(ar.latent_dim)).abs().max().item() <= 1e-4


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("steps", [1, 3, 7, 100])
def test_the_modulation_table_holds_every_time_the_sampler_asks_for(sampler, steps):
    seen = []

    def velocity(x, t):
        seen.append(t)
        return torch.zeros_like(x)

    run_sampler(sampler, velocity, torch.zeros(1, 2), steps, torch.Generator())
    assert len(seen) == evaluations(sampler, steps)
    assert sorted(set(seen)) == sampler_times(sampler, steps)  # exact floats: used as keys


def test_a_table_over_the_memory_budget_gives_the_same_tokens(tiny_recipe, monkeypatch):
    ar = _trained_like(build_ar(tiny_recipe))
    labels, settings = torch.tensor([1, 2]), SampleConfig(cfg=3.0, steps=4)
    with_table = ar.sample(labels, settings, torch.Generator().manual_seed(0))
    monkeypatch.setattr(token_sampler, "TABLE_BYTES", 0)
    step_by_step = ar.sample(labels, settings, torch.Generator().manual_seed(0))
    assert (with_table - step_by_step).abs().max().item() <= 1e-5


def test_a_failing_compile_warns_once_and_samples_as_without_it(tiny_recipe, monkeypatch):
    ar = _trained_like(build_ar(tiny_recipe))
    compiled_calls = []

    def broken_compile(module, **options):
        def call(*args):
            compiled_calls.append(options)
            raise RuntimeError("no C++ compiler found")

        return call

    monkeypatch.setattr(torch, "compile", broken_compile)
    labels, plain = torch.tensor([1, 2]), SampleConfig(cfg=2.0, steps=3)
    expected = ar.sample(labels, plain, torch.Generator().manual_seed(0))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = ar.sample(labels, SampleConfig(cfg=2.0, steps=3, compile=True),
                        torch.Generator().manual_seed(0))  # fmt: skip
    assert compiled_calls == [{"dynamic": False, "mode": None}]  # tried once, then eager
    assert [str(w.message) for w in caught] == [
        "torch.compile of the head step failed (RuntimeError: no C++ compiler found); "
        "sampling without it"
    ]
    assert torch.equal(got, expected)
