"""``spherear compare``: run one of the paper's comparisons and write its report."""

from __future__ import annotations

from pathlib import Path

import typer

from spherear.cli.errors import user_errors


@user_errors
def compare(
    comparison: Path = typer.Argument(
        ..., help="A comparison file, e.g. recipes/ablations/latents.toml."
    ),
    overrides: list[str] = typer.Option(
        [],
        "--set",
        help="Override a value of every recipe it builds, e.g. --set "
        "data.source=folder:/my/images (repeatable).",
    ),
    vae_recipe: Path | None = typer.Option(
        None, "--vae-recipe", help="Another VAE recipe, e.g. recipes/vae.toml for 256x256."
    ),
    ar_recipe: Path | None = typer.Option(
        None, "--ar-recipe", help="Another AR recipe, e.g. recipes/sphere_b.toml for 256x256."
    ),
    eval_fid: bool = typer.Option(
        False, "--eval-fid", help="Also run eval-fid on every sample set (FID in the table)."
    ),
    samples: int | None = typer.Option(
        None, "--samples", min=1, help="Samples per arm and seed (e.g. 50000 for FID)."
    ),
    output_dir: Path | None = typer.Option(
        None, "--output-dir", help="Where the runs go (default: the file's output_dir)."
    ),
    jobs: int = typer.Option(
        1,
        "--jobs",
        min=1,
        help="Run this many dataset-seed chains at once, each command with cores/jobs "
        "threads (2 on a 2-core CPU halves the time).",
    ),
    report_only: bool = typer.Option(
        False,
        "--report-only",
        help="Write the report from the runs finished so far; train nothing.",
    ),
) -> None:
    """Train, sample and score every arm of a comparison for each of its seeds and datasets
    (each stage resumes or is reused, so a rerun after a kill goes on), then write
    report/README.md and PNG charts under output_dir/name."""
    from spherear.compare import Runner, load_comparison, write_report

    given = {"vae_recipe": vae_recipe, "ar_recipe": ar_recipe, "output_dir": output_dir,
             "eval_fid": eval_fid or None, "samples": samples}  # fmt: skip
    loaded = load_comparison(comparison, overrides, **{k: str(v) if isinstance(v, Path) else v
                                                       for k, v in given.items()})  # fmt: skip
    out = write_report(loaded) if report_only else Runner(loaded, typer.echo, jobs).run()
    typer.echo(f"report: {out / 'README.md'}")
