import pytest
import torch

from spherear.models.kv_cache import KVCache
from spherear.models.transformer import Block, rope_table_2d


def test_keys_and_values_append_per_layer_up_to_the_capacity():
    cache = KVCache(max_len=4)
    k, v = torch.ones(1, 2, 3, 8), 2 * torch.ones(1, 2, 3, 8)
    keys, values = cache.update(0, k, v)
    assert keys.shape == (1, 2, 3, 8) and torch.equal(values, v)
    cache.advance(3)
    keys, _ = cache.update(0, 3 * torch.ones(1, 2, 1, 8), torch.zeros(1, 2, 1, 8))
    assert keys[0, 0, :, 0].tolist() == [1, 1, 1, 3]
    with pytest.raises(ValueError, match="holds 4 positions, asked for 8"):
        cache.update(1, torch.ones(1, 2, 5, 8), torch.ones(1, 2, 5, 8))


def test_cached_chunks_equal_full_causal_forward():
    torch.manual_seed(0)
    blocks = torch.nn.ModuleList(Block(32, 2) for _ in range(3)).eval()
    table = rope_table_2d(grid_size=4, head_dim=16, num_prefix=3)
    x = torch.randn(2, 19, 32)
    full = x
    for b in blocks:
        full = b(full, table, causal=True)
    cache = KVCache(max_len=19)
    outs = []
    for size in (3, 1, 5, 1, 9):  # prefill, single steps and chunks after a prefix
        start = cache.length
        h = x[:, start : start + size]
        for i, b in enumerate(blocks):
            h = b(h, table[start : start + size], causal=True, cache=cache, layer=i)
        cache.advance(size)
        outs.append(h)
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-5, rtol=0)
