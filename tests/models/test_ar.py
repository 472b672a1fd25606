import math

import pytest
import torch

from spherear.config import SampleConfig
from spherear.models import build_ar, build_vae
from spherear.models.token_sampler import cfg_scales, to_sphere

from ..conftest import spec_rope_table
from .conftest import ar_with_fixed_velocities

RADIUS = math.sqrt(16)


def _sphere_tokens(ar, batch):
    return to_sphere(torch.randn(batch, ar.num_tokens, ar.latent_dim))


def _trained_like(ar):
    """Zero-initialised head layers make every prediction 0; perturb them so tests see
    a head whose output depends on its inputs, as after training."""
    with torch.no_grad():
        for p in ar.head.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return ar.eval()


def test_kv_cached_decoding_equals_full_causal_forward(tiny_recipe):
    ar = _trained_like(build_ar(tiny_recipe))
    tokens = _sphere_tokens(ar, 3)
    labels = torch.tensor([0, 5, ar.null_class])
    with torch.no_grad():
        full = ar.conditions(tokens, labels)
    steps = []

    def teacher(i, z):
        steps.append(z)
        return tokens[:, i]

    ar.decode_loop(labels, teacher)
    cached = torch.stack(steps, 1)
    assert cached.shape == full.shape == (3, ar.num_tokens, ar.config.width)
    assert (cached - full).abs().max().item() <= 1e-5


def test_trunk_positions_follow_the_released_rule_column_first(tiny_recipe):
    """The AR table is not in the released files, so only the rule pins it: the model's
    attention must see exactly the table of the facts file, and swapping its x and y halves
    (rows first, as spherear 0.1 did) must change what the trunk computes."""
    ar = build_ar(tiny_recipe).eval()
    with torch.no_grad():  # sharp attention, as after training (at init it is near-uniform)
        for layer in ar.layers:
            layer.attention.wqkv.weight.mul_(20)
    grid, head_dim = math.isqrt(ar.num_tokens), ar.config.width // ar.config.num_heads
    rule = spec_rope_table(grid, head_dim, ar.num_prefix).float()
    swapped = spec_rope_table(grid, head_dim, ar.num_prefix, x_first=False).float()
    tokens, labels = _sphere_tokens(ar, 2), torch.tensor([3, 4])
    with torch.no_grad():
        ours = ar.conditions(tokens, labels)
        ar.rope = rule
        by_rule = ar.conditions(tokens, labels)
        ar.rope = swapped
        by_swapped = ar.conditions(tokens, labels)
    assert (ours - by_rule).abs().max().item() <= 1e-4
    assert (by_swapped - by_rule).abs().max().item() > 0.1


@pytest.mark.parametrize("cfg", [1.0, 4.5])
@pytest.mark.parametrize("sampler", ["sde", "ode"])
def test_every_fed_back_and_decoded_token_is_on_the_sphere(tiny_recipe, cfg, sampler):
    ar = _trained_like(build_ar(tiny_recipe))
    vae = build_vae(tiny_recipe).eval()
    fed, decoded, raw = [], [], []
    ar.proj_in.register_forward_pre_hook(lambda m, args: fed.append(args[0]))
    vae.post_quant_proj.register_forward_pre_hook(lambda m, args: decoded.append(args[0]))
    ar.head.final_layer.register_forward_hook(lambda m, a, out: raw.append(out))
    labels = torch.tensor([1, 7])
    tokens = ar.sample(labels, SampleConfig(cfg=cfg, steps=4, sampler=sampler))
    vae.decode(tokens)
    fed = torch.cat([f.reshape(-1, 16) for f in fed])
    assert len(fed) == (ar.num_tokens - 1) * len(labels) * (2 if cfg != 1.0 else 1)
    for t in (fed, decoded[0].reshape(-1, 16), tokens.reshape(-1, 16)):
        assert (t.norm(dim=-1) - RADIUS).abs().max().item() <= 1e-4
    assert raw, "the head was never called"


def test_guidance_uses_the_null_class_and_the_scale(tiny_recipe):
    ar = _trained_like(build_ar(tiny_recipe))
    seen = []
    ar.cls_embedding.register_forward_hook(lambda m, args, out: seen.append(args[0].clone()))
    ar.sample(torch.tensor([2, 3]), SampleConfig(cfg=3.0, steps=2))
    assert seen[0].tolist() == [2, 3, ar.null_class, ar.null_class]
    g1 = torch.Generator().manual_seed(0)
    g2 = torch.Generator().manual_seed(0)
    a = ar.sample(torch.tensor([2]), SampleConfig(cfg=1.0, steps=3), g1)
    b = ar.sample(torch.tensor([2]), SampleConfig(cfg=6.0, steps=3), g2)
    assert not torch.allclose(a, b)


def test_cfg_schedules():
    lin = cfg_scales(4.5, "linear", 256)
    assert lin[0] == 1.0 and lin[128] == pytest.approx(1 + 3.5 * 0.5) and lin[-1] < 4.5
    assert cfg_scales(4.5, "constant", 4) == [4.5] * 4
    with pytest.raises(ValueError, match="linear"):
        cfg_scales(4.5, "cosine", 4)


def test_training_loss_uses_repeats_and_class_dropout(tiny_recipe):
    ar = _trained_like(build_ar(tiny_recipe)).train()
    tokens = _sphere_tokens(ar, 4)
    seen, head_rows = [], []
    ar.cls_embedding.register_forward_hook(lambda m, args, out: seen.append(args[0].clone()))
    ar.head.input_proj.register_forward_hook(lambda m, args, out: head_rows.append(len(args[0])))
    ar.config.class_dropout = 1.0
    loss = ar(tokens, torch.tensor([1, 2, 3, 4]))
    assert seen[-1].tolist() == [ar.null_class] * 4
    assert head_rows[-1] == 4 * ar.num_tokens * ar.config.diff_batch_mul
    loss.backward()
    assert torch.isfinite(loss)
    grad = ar.cls_embedding.weight.grad
    assert grad[ar.null_class].abs().sum() > 0 and grad[1].abs().sum() == 0


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(tiny_recipe):
    ar = _trained_like(build_ar(tiny_recipe)).train()
    ar.config.class_dropout = 0.0
    tokens, labels = _sphere_tokens(ar, 2), torch.tensor([1, 2])
    losses, grads = [], []
    for checkpointing in (False, True):
        ar.grad_checkpointing = checkpointing
        ar.zero_grad()
        torch.manual_seed(1)
        loss = ar(tokens, labels)
        loss.backward()
        losses.append(loss.detach())
        grads.append({name: p.grad.clone() for name, p in ar.named_parameters()})
    assert grads[0]["layers.0.attention.wqkv.weight"].abs().sum() > 0
    # the recomputed forward runs the same kernels on the same inputs: equal to the bit
    assert torch.equal(losses[0], losses[1])
    for name, grad in grads[0].items():
        assert torch.equal(grad, grads[1][name]), name


def test_cfg_combines_velocities_exactly_then_normalises(tiny_recipe):
    """A stub head returns A for conditional rows and B for null-class rows, so one ODE step
    from noise gives noise + B + s_i (A - B) for token i, which must then go on the sphere."""
    a, b = torch.linspace(-1, 1, 16), torch.linspace(2, 0, 16)
    ar = ar_with_fixed_velocities(tiny_recipe, a, b)
    scales = cfg_scales(4.0, "linear", ar.num_tokens)
    gen = torch.Generator().manual_seed(5)
    tokens = ar.sample(torch.tensor([3]), SampleConfig(cfg=4.0, steps=1, sampler="ode"), gen)
    gen.manual_seed(5)  # sample() draws one noise vector per token, in order
    for i in range(ar.num_tokens):
        noise = torch.randn(1, 16, generator=gen)
        expected = to_sphere(noise + b + scales[i] * (a - b))
        torch.testing.assert_close(tokens[:, i], expected)


def test_sampling_in_train_mode_with_checkpointing_uses_the_cache(tiny_recipe):
    ar = _trained_like(build_ar(tiny_recipe))
    tokens, labels = _sphere_tokens(ar, 2), torch.tensor([1, 2])
    runs = []
    for train in (False, True):
        ar.train(train)
        ar.grad_checkpointing = train
        steps = []

        def teacher(i, z, steps=steps):
            steps.append(z)
            return tokens[:, i]

        ar.decode_loop(labels, teacher)
        runs.append(torch.stack(steps, 1))
    torch.testing.assert_close(runs[0], runs[1], atol=1e-5, rtol=0)


def test_explicit_draws_reproduce_the_loss_and_split_across_batches(tiny_recipe):
    ar = _trained_like(build_ar(tiny_recipe))
    k, n = ar.config.diff_batch_mul, ar.num_tokens
    tokens, labels = _sphere_tokens(ar, 4), torch.tensor([1, 2, 3, 4])
    drop = torch.tensor([False, True, False, False])
    t, noise = torch.rand(4, k, n), torch.randn(4, k, n, 16)
    whole = ar(tokens, labels, drop, t, noise)
    halves = [ar(tokens[s], labels[s], drop[s], t[s], noise[s]) for s in (slice(0, 2), slice(2, 4))]
    torch.testing.assert_close(whole, sum(halves) / 2)
    assert ar(tokens, labels, drop, t, noise).item() == whole.item()


@pytest.mark.parametrize("sampler", ["sde", "ode", "heun"])
def test_per_row_generators_make_a_row_independent_of_its_batch(tiny_recipe, sampler):
    ar = _trained_like(build_ar(tiny_recipe))
    settings = SampleConfig(cfg=3.0, steps=3, sampler=sampler)

    def sample(labels, seeds):
        generators = [torch.Generator().manual_seed(s) for s in seeds]
        return ar.sample(torch.tensor(labels), settings, generators)

    row = sample([1, 2, 3], [0, 1, 2])[1]
    assert not torch.allclose(row, sample([1, 2, 3], [0, 9, 2])[1])  # its own seed matters
    assert torch.equal(row, sample([5, 2, 7], [10, 1, 12])[1])  # same batch shape: bitwise
    # another batch size may round differently in the matmuls, never more
    torch.testing.assert_close(row, sample([2], [1])[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(row, sample([2, 0, 0, 0, 0], [1, 3, 4, 5, 6])[0], atol=1e-5, rtol=0)
