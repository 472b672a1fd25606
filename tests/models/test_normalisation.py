"""Where the drawn token goes back onto the sphere, on a hand-made two-row example.

A stub head answers a = (3, 4) for the class rows and b = (0, -1) for the null-class rows
(tokens of dimension 2, radius sqrt 2), so one Euler step from zero noise (temperature 0)
ends at the velocity itself, and with a constant guidance scale of 2:
- none:       b + 2 (a - b) = (6, 9)
- after_cfg:  (6, 9) / sqrt(117) * sqrt(2) = (0.7844645, 1.1766968)
- before_cfg: a' = (3, 4) / 5 * sqrt(2) = (0.8485281, 1.1313708), b' = (0, -1.4142136);
              b' + 2 (a' - b') = (1.6970563, 3.6769553)
"""

import pytest
import torch

from spherear.config import SampleConfig
from tests.models.conftest import ar_with_fixed_velocities

EXPECTED = {
    "none": [6.0, 9.0],
    "after_cfg": [0.7844645, 1.1766968],
    "before_cfg": [1.6970563, 3.6769553],
}


@pytest.fixture
def stub(tiny_recipe):
    tiny_recipe.vae.latent_dim = 2
    return ar_with_fixed_velocities(
        tiny_recipe, torch.tensor([3.0, 4.0]), torch.tensor([0.0, -1.0])
    )


@pytest.mark.parametrize("order", EXPECTED)
def test_each_normalisation_order_by_hand(stub, order):
    settings = SampleConfig(cfg=2.0, cfg_schedule="constant", steps=1, sampler="ode",
                            temperature=0.0, normalise=order)  # fmt: skip
    tokens = stub.sample(torch.tensor([1, 2]), settings, torch.Generator().manual_seed(0))
    expected = torch.tensor(EXPECTED[order]).expand_as(tokens)
    torch.testing.assert_close(tokens, expected, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("per_row", [True, False], ids=["per-row generators", "one generator"])
@pytest.mark.parametrize("sampler", ["sde", "heun"])
def test_before_cfg_draws_both_halves_from_the_same_noise(tiny_recipe, sampler, per_row):
    """With the same velocity for class and null rows, guidance changes nothing, so the
    two halves must have seen the same noise to give the normalised token of one flow."""
    tiny_recipe.vae.latent_dim = 2
    same = torch.tensor([1.0, 2.0])
    ar = ar_with_fixed_velocities(tiny_recipe, same, same)
    kw = dict(cfg=3.0, cfg_schedule="constant", steps=4, sampler=sampler)
    labels = torch.tensor([0, 5])

    def draw(order):
        generators = [torch.Generator().manual_seed(s) for s in (1, 2)]
        generator = generators if per_row else generators[0]
        return ar.sample(labels, SampleConfig(**kw, normalise=order), generator)

    torch.testing.assert_close(draw("before_cfg"), draw("after_cfg"), atol=1e-5, rtol=1e-5)


def test_auto_is_after_cfg_on_the_sphere_and_none_for_raw_latents(tiny_recipe):
    from spherear.models.token_space import normalisation

    assert normalisation(SampleConfig(), tiny_recipe.ar) == "after_cfg"
    tiny_recipe.ar.token_space = "raw"
    assert normalisation(SampleConfig(), tiny_recipe.ar) == "none"
    assert normalisation(SampleConfig(normalise="before_cfg"), tiny_recipe.ar) == "before_cfg"
