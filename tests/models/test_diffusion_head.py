import math

import pytest
import torch

from spherear.models.diffusion_head import DiffusionHead, timestep_embedding


def test_time_embedding_is_cosines_then_sines_of_1000_t():
    emb = timestep_embedding(torch.tensor([0.0, 0.001]), dim=8)
    assert emb[0].tolist() == [1.0] * 4 + [0.0] * 4
    # the first frequency is 1: t = 0.001 turns it by 1 radian
    assert emb[1, 0].item() == pytest.approx(math.cos(1.0))
    assert emb[1, 4].item() == pytest.approx(math.sin(1.0))
    assert emb[1, 3].item() == pytest.approx(math.cos(10000 ** (-3 / 4)))


def test_zero_initialised_modulation_starts_at_zero_with_identity_blocks():
    head = DiffusionHead(latent_dim=4, cond_dim=6, width=16, depth=4, groups=2)
    head.zero_init_modulation()
    x, t, z = torch.randn(5, 4), torch.rand(5), torch.randn(5, 6)
    assert torch.equal(head(x, t, z), torch.zeros(5, 4))
    torch.nn.init.normal_(head.final_layer.linear.weight)
    # every residual block is gated by zero and the final modulation is zero: the input
    # projection reaches the last linear layer through a plain layer norm
    h = torch.nn.functional.layer_norm(head.input_proj(x), (16,), eps=1e-6)
    expected = head.final_layer.linear(h)
    torch.testing.assert_close(head(x, t, z), expected)
    assert head.blocks_per_group == 2 and len(head.ada_ln_blocks) == 2
    with pytest.raises(ValueError, match="head depth 3 must be a multiple of head groups 2"):
        DiffusionHead(4, 6, 16, depth=3, groups=2)
