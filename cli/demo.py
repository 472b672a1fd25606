"""``spherear demo``: a local web page that samples a model by class."""

from __future__ import annotations

import typer

from spherear.checkpoint_header import Weights
from spherear.cli.errors import user_errors
from spherear.cli.sample import ar_checkpoint


@user_errors
def demo(
    checkpoint: str | None = ar_checkpoint(),
    host: str = typer.Option(
        "127.0.0.1", "--host", help="Address to serve on; another than loopback is warned of."
    ),
    port: int = typer.Option(7860, "--port", min=1, max=65535, help="Port to serve on."),
    weights: Weights = typer.Option("ema", "--weights", help="EMA or raw weights."),
) -> None:
    """Serve a page that samples the model by class: pick a class, the number of images, the
    seed, guidance, sampler, steps, temperature and precision; it shows the images (each
    downloadable as PNG), the time per image, and the `spherear sample` command that writes
    the same bytes. Needs Gradio, the package's demo extra (see the README)."""
    from spherear.demo import load_model, require_gradio, serve

    require_gradio()  # before minutes of loading weights
    model = load_model(checkpoint, weights)
    if checkpoint is None:
        typer.echo(f"serving the newest train-ar run: {model.checkpoint}")
    serve(model, host, port, say=typer.echo)
