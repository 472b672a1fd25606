"""The fast sampling loop against the paper's plain loop, annealed steps per token and the
compile fallback."""

import math
import warnings

import pytest
import torch

from spherear.config import SampleConfig
from spherear.models import build_ar, token_sampler
from spherear.models.flow import evaluations, token_steps
from spherear.models.reference_sampling import reference_sample


def _trained_like(ar):
    with torch.no_grad():  # a zero-initialised head would answer 0 whatever its inputs
        for p in ar.head.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return ar.eval()


def _eager_and_compiled(ar):
    """Two samples of the same rows, eager then with ``compile``, and the warnings of the
    compiled one."""
    labels, plain = torch.tensor([1, 2]), SampleConfig(cfg=2.0, steps=3)
    expected = ar.sample(labels, plain, torch.Generator().manual_seed(0))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = ar.sample(labels, SampleConfig(cfg=2.0, steps=3, compile=True),
                        torch.Generator().manual_seed(0))  # fmt: skip
    return expected, got, caught


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


def test_annealed_sampling_runs_each_token_with_its_own_steps(tiny_recipe):
    ar = _trained_like(build_ar(tiny_recipe))
    settings = SampleConfig(cfg=3.0, steps=9, steps_last=2, sampler="heun")
    _, outputs = _head_outputs(ar, lambda: ar.sample(torch.tensor([2]), settings))
    expected = sum(evaluations("heun", s) for s in token_steps(9, 2, ar.num_tokens))
    assert len(outputs) == expected
    tokens = ar.sample(torch.tensor([2, 3]), settings)
    assert (tokens.norm(dim=-1) - math.sqrt(ar.latent_dim)).abs().max().item() <= 1e-4


@pytest.mark.parametrize("sampler", ["heun", "sde"])
def test_temperature_zero_makes_tokens_independent_of_the_noise(tiny_recipe, sampler):
    ar = _trained_like(build_ar(tiny_recipe))
    labels = torch.tensor([1, 1, 6])

    def draw(temperature, seeds):
        settings = SampleConfig(cfg=3.0, steps=4, sampler=sampler, temperature=temperature)
        return ar.sample(labels, settings, [torch.Generator().manual_seed(s) for s in seeds])

    cold = draw(0.0, (0, 1, 2)), draw(0.0, (7, 8, 9))
    assert (cold[0] - cold[1]).abs().max().item() == 0.0
    assert (cold[0][0] - cold[0][1]).abs().max().item() < 1e-5  # same class, same tokens
    warm = draw(1.0, (0, 1, 2)), draw(0.5, (0, 1, 2))
    assert (warm[0] - warm[1]).abs().max().item() > 0.1
    with pytest.raises(ValueError, match="temperature 1"):
        reference_sample(ar, labels, SampleConfig(sampler="sde", temperature=0.5))


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
    expected, got, caught = _eager_and_compiled(ar)
    # tried once, then eager
    assert compiled_calls == [{"dynamic": False, "mode": None, "options": {"freezing": True}}]
    assert [str(w.message) for w in caught] == [
        "torch.compile of the head step failed (RuntimeError: no C++ compiler found); "
        "sampling without it"
    ]
    assert torch.equal(got, expected)


def test_compiled_head_step_samples_as_eager(tiny_recipe):
    """Inductor on the CPU (gcc): the guided head step compiled for real, no fallback."""
    ar = _trained_like(build_ar(tiny_recipe))
    expected, got, caught = _eager_and_compiled(ar)
    assert not [w for w in caught if "torch.compile of the head step failed" in str(w.message)]
    # fused kernels sum in another order: fp32 rounding only; fp32's spacing at the tokens'
    # radius (4) is 4.8e-7, and 1e-5 leaves room for 20 such steps through the sampler
    assert (got - expected).abs().max().item() <= 1e-5
