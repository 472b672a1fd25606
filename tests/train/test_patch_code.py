import dataclasses
import re

import pytest

from spherear.config import RecipeError, load_recipe
from spherear.train.patch_code import check_patch_code

from ..conftest import ROOT


@pytest.mark.parametrize(
    "change, message",
    [
        ({"patch_shortcut": False}, "fits the patch shortcut: set vae.patch_shortcut = true"),
        ({"latent_dim": 50}, "latent_dim 50 is more than one above the 48 numbers of a 4x4 RGB"),
        ({"latent_dim": 16, "channels": (8, 16, 8)},
         "latent_dim 16 exceeds the width 8 (the last of vae.channels)"),
    ],
)  # fmt: skip
def test_a_pca_code_the_vae_cannot_hold_is_refused_naming_the_key(change, message):
    vae = load_recipe(ROOT / "recipes" / "tiny_vae.toml").vae
    check_patch_code(vae)  # the tiny S-VAE can hold it
    with pytest.raises(RecipeError, match=re.escape(message)):
        check_patch_code(dataclasses.replace(vae, **change))
