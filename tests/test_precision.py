import torch

from spherear.config import SampleConfig
from spherear.models import build_ar
from spherear.precision import autocast, held_in


def _head_perturbed(ar):
    with torch.no_grad():  # the zero-initialised head would make every token the same
        for p in ar.head.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return ar.eval()


def test_bf16_holds_a_copy_of_the_weights_in_bf16_and_the_rope_table_in_fp32(tiny_recipe):
    ar = build_ar(tiny_recipe)
    held = held_in(ar, "bf16")
    assert held_in(ar, "fp32") is ar
    assert {p.dtype for p in held.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in ar.parameters()} == {torch.float32}  # the original is untouched
    assert held.rope.dtype == torch.float32 and torch.equal(held.rope, ar.rope)
    for (name, p), q in zip(ar.named_parameters(), held.parameters(), strict=True):
        assert torch.equal(p.bfloat16(), q), name


def test_bf16_tokens_are_the_fp32_tokens_to_within_one_bf16_step(tiny_recipe):
    ar = _head_perturbed(build_ar(tiny_recipe))
    labels, settings = torch.tensor([1, 2]), SampleConfig(cfg=2.0, steps=3)
    fp32 = ar.sample(labels, settings, torch.Generator().manual_seed(0))
    bf16 = held_in(ar, "bf16").sample(labels, settings, torch.Generator().manual_seed(0))
    assert fp32.dtype == bf16.dtype == torch.float32  # the sampler's own state stays fp32
    # tokens lie on the sphere of radius 4, where bf16 numbers are 2^-5 apart
    assert 0 < (fp32 - bf16).abs().max().item() <= 2**-5


def test_autocast_is_bf16_or_off():
    a = torch.randn(3, 3)
    with autocast(torch.device("cpu"), "bf16"):
        assert (a @ a).dtype == torch.bfloat16
    with autocast(torch.device("cpu"), "fp32"):
        assert (a @ a).dtype == torch.float32
