import torch

from spherear.models.kv_cache import KVCache
from spherear.models.transformer import Block, apply_rope, rope_table_2d, swiglu_hidden


def test_swiglu_hidden_matches_released_widths():
    assert [swiglu_hidden(d) for d in (512, 768, 1024, 1280)] == [1536, 2048, 2816, 3584]


def test_rope_table_layout_and_prefix_identity():
    table = rope_table_2d(grid_size=16, head_dim=64, num_prefix=4)
    assert table.shape == (260, 32, 2)
    torch.testing.assert_close(table[:4, :, 0], torch.ones(4, 32))  # prefix at (0, 0): no turn
    torch.testing.assert_close(table[:4, :, 1], torch.zeros(4, 32))
    # token (row 0, col 1) shares its row half with token (0, 0) and not its column half
    t00, t01, t10 = table[4], table[5], table[4 + 16]
    torch.testing.assert_close(t00[:16], t01[:16])
    assert not torch.allclose(t00[16:], t01[16:])
    torch.testing.assert_close(t00[16:], t10[16:])


def test_rope_is_relative():
    """q.k after RoPE depends on the offset between positions only (per axis)."""
    table = rope_table_2d(grid_size=8, head_dim=16, num_prefix=0)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def score(i, j):
        return (apply_rope(q, table[i : i + 1]) * apply_rope(k, table[j : j + 1])).sum()

    torch.testing.assert_close(score(9, 10), score(20, 21))  # same row, columns one apart


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


def test_rope_table_values_by_hand():
    """head_dim 8: per axis 4 dims = 2 frequencies, 1 and 1/10000**(2/4) = 0.01. The token at
    row 1, column 2 of a 3x3 grid sits at (2, 3) after the prefix's (0, 0)."""
    table = rope_table_2d(grid_size=3, head_dim=8, num_prefix=2)
    angles = torch.tensor([2 * 1.0, 2 * 0.01, 3 * 1.0, 3 * 0.01])
    row = table[2 + 1 * 3 + 2]
    torch.testing.assert_close(row[:, 0], angles.cos())
    torch.testing.assert_close(row[:, 1], angles.sin())
