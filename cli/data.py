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
