"""The paper's plain sampling loop on its own: one SDE step worked out by hand with a head
that answers fixed velocities, and the settings it does not cover refused."""

import math

import pytest
import torch

from spherear.config import SampleConfig
from spherear.models import build_ar
from spherear.models.reference_sampling import reference_sample

from .conftest import ar_with_fixed_velocities


def test_one_sde_step_guides_then_lands_on_the_sphere(tiny_recipe):
    """A stub head answers A for the class rows and B for the null-class rows. From noise x
    and the step's normal e, one Euler-Maruyama step over [0, 0.96] (drift v - x at t = 0)
    and the final Euler step give 0.04 x + v + sqrt(1.92) e with v = B + s_i (A - B),
    s_i = 1 + (cfg - 1) i / N on the linear schedule; then onto the sphere of radius 4."""
    a, b = torch.linspace(-1, 1, 16), torch.linspace(2, 0, 16)
    ar = ar_with_fixed_velocities(tiny_recipe, a, b)
    settings = SampleConfig(cfg=3.0, cfg_schedule="linear", steps=1, sampler="sde")
    tokens = reference_sample(ar, torch.tensor([2, 5]), settings, [
        torch.Generator().manual_seed(s) for s in (7, 8)])  # fmt: skip
    generators = [torch.Generator().manual_seed(s) for s in (7, 8)]
    n = ar.num_tokens
    for i in range(n):
        v = b + (1 + 2.0 * i / n) * (a - b)
        for row, g in enumerate(generators):  # per row: the start noise, then the step's e
            x, e = torch.randn(2, 16, generator=g)
            end = 0.04 * x + v + math.sqrt(1.92) * e
            expected = end / end.norm() * 4
            torch.testing.assert_close(tokens[row, i], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "settings",
    [SampleConfig(sampler="ode"), SampleConfig(steps_last=5), SampleConfig(normalise="none")],
)
def test_settings_beyond_the_paper_are_refused(tiny_recipe, settings):
    with pytest.raises(ValueError, match="the paper's sampler: sde, constant steps"):
        reference_sample(build_ar(tiny_recipe), torch.tensor([1]), settings)
