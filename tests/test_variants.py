"""The paper's comparisons as recipe keys: combinations refused in one line, exports that
record and honour their choices, and `spherear info` naming them."""

import dataclasses

import pytest
import torch

from spherear.checkpoints import (
    describe_variant,
    inspect_checkpoint,
    load_pretrained,
    save_pretrained,
)
from spherear.config import RecipeError, SampleConfig, recipe_from_dict, recipe_to_dict
from spherear.models import build_ar, build_vae


@pytest.mark.parametrize(
    "sets, words",
    [
        (["ar.token_space=raw"], ["ar.token_space", "gaussian"]),
        (["ar.latent_scale=0.5"], ["ar.latent_scale", "gaussian"]),
        (["vae.posterior=gaussian", "vae_loss.initial_kappa=100.0"], ["initial_std"]),
        (["vae_loss.initial_std=0.1"], ["initial_kappa"]),
        (["vae.backbone=transformer"], ["vae.backbone"]),
        (["sample.normalise=later"], ["sample.normalise"]),
    ],
)
def test_combinations_that_mean_nothing_stop_in_one_line(tiny_recipe, sets, words):
    data = recipe_to_dict(tiny_recipe)
    data["vae_loss"] = {}
    with pytest.raises(RecipeError) as e:
        recipe_from_dict(data, "r.toml", sets)
    message = str(e.value)
    assert "\n" not in message and message.startswith("r.toml")
    assert all(w in message for w in words), message


VARIANTS = {
    "S-VAE, vit": ["vae.backbone=vit"],
    "Gaussian, sphere, cnn": ["vae.posterior=gaussian", "vae.backbone=cnn",
                              "ar.token_space=sphere", "ar.latent_scale=0.5"],
    "Gaussian, raw": ["vae.posterior=gaussian", "ar.token_space=raw", "ar.latent_scale=0.25",
                      "sample.normalise=auto"],
}  # fmt: skip


@pytest.mark.parametrize("name", VARIANTS)
def test_an_export_of_each_variant_loads_and_samples_with_its_choices(tmp_path, tiny_recipe, name):
    recipe = recipe_from_dict(recipe_to_dict(tiny_recipe), "r", ["ar.num_classes=10",
                                                                 *VARIANTS[name]])  # fmt: skip
    vae, ar = build_vae(recipe), build_ar(recipe)
    save_pretrained(tmp_path / "export", recipe, vae, ar.state_dict())
    loaded = load_pretrained(tmp_path / "export")
    assert loaded.recipe.vae == recipe.vae and loaded.recipe.ar == recipe.ar
    assert type(loaded.vae.encode(torch.zeros(1, 3, 32, 32))) is type(
        vae.encode(torch.zeros(1, 3, 32, 32))
    )
    settings = dataclasses.replace(loaded.recipe.sample, steps=2, sampler="ode", cfg=2.0)
    tokens = loaded.ar.sample(torch.tensor([1, 2]), settings, torch.Generator().manual_seed(0))
    norms = tokens.norm(dim=-1)
    if name == "Gaussian, raw":  # auto: no normalisation for raw latents, so off the sphere
        assert (norms - 4).abs().max() > 1e-3
        latents = loaded.ar.to_latents(tokens)
        torch.testing.assert_close(latents, tokens / 0.25)
    else:
        torch.testing.assert_close(norms, torch.full_like(norms, 4.0))
    assert loaded.vae.decode(loaded.ar.to_latents(tokens)).shape == (2, 3, 32, 32)
    described = inspect_checkpoint(tmp_path / "export").describe()
    assert describe_variant(recipe) in described
    assert recipe.vae.backbone in described and recipe.vae.posterior.replace("_", "-") in described


def test_info_names_the_normalisation_a_raw_model_samples_with(tiny_recipe):
    recipe = recipe_from_dict(recipe_to_dict(tiny_recipe), "r", VARIANTS["Gaussian, raw"])
    assert "tokens: raw (latent scale 0.25)" in describe_variant(recipe)
    assert "sampling normalises none" in describe_variant(recipe)
    recipe.sample = SampleConfig(normalise="after_cfg")
    assert "sampling normalises after_cfg" in describe_variant(recipe)
