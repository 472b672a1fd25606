"""``spherear push-to-hub``: publish a run as a Hugging Face model repo with a model card."""

from __future__ import annotations

from pathlib import Path

import typer

from spherear.cli.errors import user_errors


@user_errors
def push_to_hub(
    run: Path | None = typer.Option(
        None, "--run", help="A finished run folder (default: the newest train-ar run in runs/)."
    ),
    repo_id: str | None = typer.Option(
        None, "--repo-id", help="USER/NAME on the hub (default: the recipe's hub.repo_id)."
    ),
    private: bool = typer.Option(False, "--private", help="Create the repo as private."),
    revision: str | None = typer.Option(
        None, "--revision", help="The branch to commit to (created if missing)."
    ),
    create_pr: bool = typer.Option(False, "--create-pr", help="Open a pull request instead."),
    include_samples: bool = typer.Option(
        False, "--include-samples", help="Also publish samples/<tag>/ (npz, settings, evals)."
    ),
    weights: str = typer.Option(
        "ema", "--weights", help="AR weights to publish: ema, raw or both."
    ),
    dry_run: Path | None = typer.Option(
        None, "--dry-run", help="Write the folder that would be uploaded to DIR; upload nothing."
    ),
    space: bool = typer.Option(
        False,
        "--space",
        help="Also publish a Space, USER/NAME-demo, that serves the `spherear demo` page on "
        "the model (app.py, requirements.txt, README.md); a dry run writes it to DIR-space. "
        "Needs the demo extra.",
    ),
) -> None:
    """Publish a run: its exported safetensors, config.json, recipe.toml and a generated
    model card (with the run's eval-fid results and sample grid), in one commit. Never
    training state, never a file holding a token. The token comes from HF_TOKEN or
    `hf auth login`."""
    from spherear.hub.push import push_to_hub as push

    pushed = push(
        run,
        repo_id,
        private=private,
        revision=revision,
        create_pr=create_pr,
        include_samples=include_samples,
        weights=weights,
        dry_run=dry_run,
        space=space,
        say=typer.echo,
    )
    typer.echo(f"files: {', '.join(pushed.files)}")
    if pushed.space_id:
        typer.echo(f"space files: {', '.join(pushed.space_files)}")
    if dry_run is not None:
        typer.echo(
            f"dry run: wrote what would go to {pushed.repo_id} into {pushed.destination}; "
            "nothing was uploaded"
        )
        if pushed.space_id:
            typer.echo(f"dry run: and what would go to the Space {pushed.space_id} into "
                       f"{pushed.space_destination}")  # fmt: skip
    else:
        typer.echo(f"pushed to {pushed.repo_id}: {pushed.destination}")
        if pushed.space_id:
            typer.echo(f"pushed the Space {pushed.space_id}: {pushed.space_destination}")
