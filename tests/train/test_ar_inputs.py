"""What train-ar trains on: each micro-batch's draws, made from each example's own seed."""

import numpy as np
import pytest
import torch

from spherear.config import load_recipe
from spherear.data.latent_cache import LatentDataset
from spherear.data.prepare import PreparedImages
from spherear.data.transforms import to_tensor, train_view
from spherear.models.power_spherical import PowerSpherical
from spherear.train.ar_inputs import MicroBatches
from spherear.train.batches import BatchPlan

from .conftest import STEPS


@pytest.mark.parametrize("inputs", ["latents", "images"])
def test_a_micro_batch_equals_its_samples_drawn_one_by_one(ar_workspace, inputs):
    """Batching the draws must not change them: each generator draws the view, the
    posterior sample (latents only), class dropout, t and noise, in this order."""
    recipe = load_recipe(ar_workspace / "recipe.toml", [f"train.inputs={inputs}"])
    vae, ar, aug = recipe.vae, recipe.ar, recipe.augment
    source = PreparedImages(ar_workspace / "data") if inputs == "images" else LatentDataset(
        ar_workspace / "latents")  # fmt: skip
    batches = MicroBatches(recipe, source, BatchPlan.make(recipe.train, 1), 0, 0, STEPS)
    indices, seeds = [5, 0, 39, 5], [11, 12, 13, 14]
    batch = batches.make_batch(indices, seeds, epoch=0.5)
    for j, (index, seed) in enumerate(zip(indices, seeds, strict=True)):
        g = torch.Generator().manual_seed(seed)
        if inputs == "images":
            image, label = source[index]
            decay = (aug.crop_decay_start_epoch, aug.crop_decay_end_epoch)
            rng = np.random.default_rng(seed)
            x = to_tensor(train_view(image, vae.resolution, 0.5, rng, aug.random_crop_min,
                                     aug.hflip, decay))  # fmt: skip
        else:
            view = int(torch.randint(source.num_views, (), generator=g))
            params, label = source.posterior(index, view)
            x = PowerSpherical(params["mu"], params["kappa"]).sample(g) * 4.0
        assert torch.equal(batch["x"][j], x) and batch["label"][j] == label
        assert batch["drop"][j] == (torch.rand((), generator=g) < ar.class_dropout)
        assert torch.equal(batch["t"][j], torch.sigmoid(torch.randn(4, 64, generator=g)))
        assert torch.equal(batch["noise"][j], torch.randn(4, 64, 16, generator=g))
