"""``spherear prepare-data`` and ``spherear cache-latents``."""

from __future__ import annotations

from pathlib import Path

import typer

from spherear.cli.errors import user_errors


@user_errors
def prepare_data(
    source: str = typer.Option(
        ..., "--source", help="hf:<dataset id>[@revision], folder:<path>, tar:<path> or synthetic."
    ),
    out: Path = typer.Option(..., "--out", help="Output folder (created when complete)."),
    resolution: int = typer.Option(
        256, "--resolution", help="Training resolution; images keep resolution/0.8 short side."
    ),
    num_proc: int = typer.Option(1, "--num-proc", min=1, help="Worker processes."),
    split: str = typer.Option("train", "--split", help="train or validation."),
    num_images: int = typer.Option(
        10_000, "--num-images", min=1, help="synthetic only: how many images."
    ),
    seed: int = typer.Option(0, "--seed", help="synthetic only: the generator's seed."),
) -> None:
    """Turn ImageNet (hub, folder or the original tar) or the synthetic set into one
    Parquet format, resumably; an existing complete output is reused."""
    from spherear.data.prepare import prepare_dataset

    result = prepare_dataset(source, out, resolution, num_proc, split, num_images, seed)
    typer.echo(result.summary())


@user_errors
def cache_latents(
    recipe: Path = typer.Option(..., "--recipe", "-r", help="The recipe (its [vae], [cache])."),
    vae: Path = typer.Option(..., "--vae", help="A spherear export or the authors' vae.pt."),
    data: Path = typer.Option(..., "--data", help="A folder made by prepare-data."),
    out: Path = typer.Option(..., "--out", help="The cache folder."),
    overrides: list[str] = typer.Option([], "--set", help="Override a recipe value."),
) -> None:
    """Encode a prepared dataset with a trained S-VAE into a sharded, resumable cache of
    posteriors (centre crop and flip, plus optional random crops). Multi-process with
    `accelerate launch` or `torchrun`."""
    import torch
    from accelerate import Accelerator

    from spherear.checkpoints import load_checkpoint
    from spherear.config import load_recipe
    from spherear.data.latent_cache import CacheError
    from spherear.data.latent_cache import cache_latents as run

    resolved = load_recipe(recipe, overrides)
    loaded = load_checkpoint(vae)
    if loaded.recipe.vae != resolved.vae:
        raise CacheError(
            f"{vae}: its VAE ({loaded.recipe.vae}) is not the one {recipe} describes "
            f"({resolved.vae}); pass the matching recipe or checkpoint"
        )
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    manifest = run(resolved, loaded.vae, vae, data, out, accelerator)
    if accelerator.is_main_process:
        s = manifest["settings"]
        typer.echo(
            f"cached {s['num_images']} images x {len(s['views'])} views in {out} "
            f"({manifest['bytes_per_view']} bytes per image per view)"
        )
