"""The model card: what a dry run stages loads back into the same sampler, and its card
validates offline as the hub would parse it."""

import pytest
import torch
from huggingface_hub import ModelCard, ModelCardData

import spherear
from spherear.checkpoints import load_checkpoint
from spherear.config import SampleConfig
from spherear.hub.card import check_card

from .conftest import MODEL_INDEX, TAG, files_in, make_run, push


@pytest.fixture
def one_thread():
    """Sampling is thousands of tiny matmuls: on a shared CPU, threads only contend."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def sample_images(loaded) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    settings = SampleConfig(cfg=2.0, cfg_schedule="linear", steps=4, sampler="sde")
    tokens = loaded.ar.sample(torch.tensor([1, 2]), settings, generator)
    return loaded.vae.decode(tokens)


def test_dry_run_folder_loads_back_into_the_same_sampler_and_its_card_validates(
    tmp_path, tiny_recipe, one_thread
):
    run = make_run(tmp_path, tiny_recipe)
    out = push("--run", str(run), "--dry-run", str(tmp_path / "staged"))
    assert out.exit_code == 0, out.output
    assert f"run: {run}" in out.output and "nothing was uploaded" in out.output
    staged = tmp_path / "staged"
    names = {
        "README.md",
        "ar.safetensors",
        "config.json",
        "grid.png",
        "recipe.toml",
        "vae.safetensors",
    }
    assert set(files_in(staged)) == names  # EMA only; no checkpoints/, no samples/ by default
    assert files_in(staged)["grid.png"] == files_in(run / "samples" / TAG)["grid.png"]

    published = sample_images(spherear.from_pretrained(staged))
    assert torch.equal(published, sample_images(load_checkpoint(run / "export")))
    raw = sample_images(load_checkpoint(run / "export", weights="raw"))
    assert not torch.equal(published, raw)  # the EMA weights were published, not the raw ones

    card = ModelCard.load(staged / "README.md")  # the offline part of what the hub validates
    assert ModelCardData(**card.data.to_dict()).to_dict() == card.data.to_dict()
    assert check_card(staged / "README.md").data.library_name == "spherear"
    assert card.data.license == "mit" and "spherear" in card.data.tags
    assert card.data.model_name == "tiny-sphere"
    assert {r.metric_type: r.metric_value for r in card.data.eval_results} == MODEL_INDEX
    assert all(TAG in r.metric_name for r in card.data.eval_results)
    text = card.text
    assert "![samples](grid.png)" in text and "| FID | 123.4 |" in text
    assert "| FD_dinov2 | 77 |" in text and "(8 images); sampling settings: n=8, cfg=2.0" in text
    assert "reference `reference.npz (8 images)`" in text and "> Warning: only 8 samples" in text
    assert "spherear sample --checkpoint hf://me/tiny-sphere" in text
    assert 'spherear.from_pretrained("me/tiny-sphere")' in text
    assert "| class_consistency | 0.875 |" in text and "not a standard benchmark" in text
    assert str(tmp_path) not in text  # local paths from settings.json stay local

    usage = text.split("```python\n")[1].split("```")[0]
    exec(usage.replace('"me/tiny-sphere"', repr(str(staged))), scope := {})
    assert scope["images"].shape == (4, 3, 32, 32)
