import pytest
import torch

from spherear.models.transformer import apply_rope, rope_table_2d, swiglu_hidden

from ..conftest import spec_rope_table


def test_swiglu_hidden_matches_released_widths():
    assert [swiglu_hidden(d) for d in (512, 768, 1024, 1280)] == [1536, 2048, 2816, 3584]


# (token index, pair, cos, sin), worked out by hand from the released rule (facts file,
# 2D RoPE): token (r, c) at x = c + 1.5, y = r + 1.5, f_j = 10000^(-2j / (d/2)).
# d = 64, 16x16 grid after 4 registers: the VAE's table.
BY_HAND_64 = [
    (0, 0, 1.0, 0.0),  # a register: not rotated
    (3, 31, 1.0, 0.0),
    (4, 0, 0.0707372016677, 0.997494986604),  # token (0, 0): x = 1.5, angle 1.5
    (4, 1, 0.664843537417, 0.746982644213),  # 1.5 * 10^-0.25
    (4, 15, 0.999999964424, 0.000266741908343),  # 1.5 * 10^-3.75
    (4, 16, 0.0707372016677, 0.997494986604),  # y = 1.5
    (4 + 2 * 16 + 5, 0, 0.976587625728, 0.215119988088),  # token (2, 5): x = 6.5
    (4 + 2 * 16 + 5, 1, -0.870968663047, -0.491338567579),  # 6.5 * 10^-0.25
    (4 + 2 * 16 + 5, 15, 0.999999331969, 0.00115588135914),
    (4 + 2 * 16 + 5, 16, -0.936456687291, -0.35078322769),  # y = 3.5
    (4 + 2 * 16 + 5, 17, -0.387020713154, 0.922071020903),  # 3.5 * 10^-0.25
]
# d = 24 (SphereAR-tiny: width 96, 4 heads), 8x8 grid after 4 class tokens; f_1 = 10^(-2/3).
BY_HAND_24 = [
    (2, 0, 1.0, 0.0),  # a class token
    (4, 0, 0.0707372016677, 0.997494986604),  # token (0, 0)
    (4 + 2 * 8 + 5, 0, 0.976587625728, 0.215119988088),  # token (2, 5): x = 6.5
    (4 + 2 * 8 + 5, 1, 0.169590148136, 0.985514678559),  # 6.5 * 10^(-2/3)
    (4 + 2 * 8 + 5, 5, 0.99999544876, 0.00301702816477),  # 6.5 * 10^(-10/3)
    (4 + 2 * 8 + 5, 6, -0.936456687291, -0.35078322769),  # y = 3.5
    (4 + 2 * 8 + 5, 7, 0.728920772615, 0.684598062553),  # 3.5 * 10^(-2/3)
]


@pytest.mark.parametrize(
    "grid, head_dim, prefix, entries", [(16, 64, 4, BY_HAND_64), (8, 24, 4, BY_HAND_24)]
)
def test_rope_table_matches_numbers_worked_out_by_hand(grid, head_dim, prefix, entries):
    table = rope_table_2d(grid_size=grid, head_dim=head_dim, num_prefix=prefix)
    assert table.shape == (prefix + grid * grid, head_dim // 2, 2)
    for token, pair, cos, sin in entries:
        assert table[token, pair].tolist() == pytest.approx([cos, sin], abs=1e-6), (token, pair)


def test_rope_table_matches_the_rule_everywhere():
    for grid, head_dim, prefix in [(16, 64, 4), (8, 24, 4), (16, 64, 16), (3, 8, 0)]:
        expected = spec_rope_table(grid, head_dim, prefix).float()
        torch.testing.assert_close(rope_table_2d(grid, head_dim, prefix), expected, atol=2e-6,
                                   rtol=0)  # fmt: skip


def test_rope_is_relative():
    """q.k after RoPE depends on the offset between positions only (per axis)."""
    table = rope_table_2d(grid_size=8, head_dim=16, num_prefix=0)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def score(i, j):
        return (apply_rope(q, table[i : i + 1]) * apply_rope(k, table[j : j + 1])).sum()

    torch.testing.assert_close(score(9, 10), score(20, 21))  # same row, columns one apart
