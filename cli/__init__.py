"""The ``spherear`` command line: parse, load the recipe, call the library, print.

Installed as ``spherear.cli``. Errors the user can fix (a bad recipe key, a file that is
not a checkpoint, a mistyped option) print one line and exit with status 2.
"""

from __future__ import annotations

import sys

import typer

from spherear.cli import compare as compare_cli
from spherear.cli import data, info, train
from spherear.cli import demo as demo_cli
from spherear.cli import evaluate as evaluate_cli
from spherear.cli import hub as hub_cli
from spherear.cli import probe as probe_cli
from spherear.cli import sample as sample_cli
from spherear.version import __version__

app = typer.Typer(
    name="spherear",
    help="Train, sample, evaluate and publish SphereAR image generators.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"spherear {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """SphereAR: hyperspherical latents for continuous-token autoregressive generation."""


app.command("info")(info.info)
app.command("runs")(info.runs)
app.command("prepare-data")(data.prepare_data)
app.command("cache-latents")(data.cache_latents)
app.command("train-vae")(train.train_vae)
app.command("train-ar")(train.train_ar)
app.command("push-to-hub")(hub_cli.push_to_hub)
app.command("eval-fid")(evaluate_cli.eval_fid)
app.command("sample")(sample_cli.sample)
app.command("eval-probe")(probe_cli.eval_probe)
app.command("compare")(compare_cli.compare)
app.command("demo")(demo_cli.demo)


def main() -> None:
    try:
        code = app(standalone_mode=False)
    except typer.TyperException as e:  # a mistyped command or option: one line too
        if not hasattr(e, "format_message"):  # Ctrl-C while the options are read
            typer.echo("interrupted", err=True)
            sys.exit(130)
        where = e.ctx.command_path if getattr(e, "ctx", None) else "spherear"
        typer.echo(f"error: {where}: {e.format_message()} (see `{where} --help`)", err=True)
        code = getattr(e, "exit_code", 2)
    sys.exit(code)
