"""``push-to-hub``: find the run, stage it (``spherear.hub.stage``), then either upload the
staged folder in one commit or, for ``--dry-run DIR``, keep it as DIR and upload nothing.
``upload`` is the only function that talks to the hub: one ``create_repo`` and one
``upload_folder``.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from spherear.config import load_recipe
from spherear.hub import PushError
from spherear.hub.stage import AR_FILES, Published, refuse_tokens, stage
from spherear.hub_files import REPO_ID
from spherear.runs import RUNS, find_run
from spherear.version import __version__


@dataclass
class Pushed:
    repo_id: str
    files: list[str]
    destination: str  # the dry-run folder, or the commit (or pull request) URL


def _first_line(e: Exception) -> str:
    return next(iter(str(e).strip().splitlines()), type(e).__name__)


def upload(
    folder: Path,
    repo_id: str,
    private: bool = False,
    revision: str | None = None,
    create_pr: bool = False,
    message: str = "Upload with spherear",
) -> str:
    """The one network step: create the repo if needed (and the branch ``revision``), then
    commit ``folder`` in one ``upload_folder``. The token comes from ``HF_TOKEN`` or the hub
    login inside huggingface_hub. Returns the commit or pull-request URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi()
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision and not create_pr:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            revision=revision,
            create_pr=create_pr,
            commit_message=message,
        )
    except HfHubHTTPError as e:
        raise PushError(
            f"pushing to {repo_id} failed ({_first_line(e)}); log in with `hf auth login` or "
            "set HF_TOKEN to a token with write access"
        ) from None
    except Exception as e:  # the HTTP client's own connection errors differ between versions
        raise PushError(
            f"pushing to {repo_id} failed ({type(e).__name__}: {_first_line(e)}); is the hub "
            "reachable from here?"
        ) from None
    return commit.pr_url or commit.commit_url


def push_to_hub(
    run: str | Path | None = None,
    repo_id: str | None = None,
    private: bool = False,
    revision: str | None = None,
    create_pr: bool = False,
    include_samples: bool = False,
    weights: Published = "ema",
    dry_run: Path | None = None,
    root: str | Path = RUNS,
    say: Callable[[str], None] = lambda message: None,
) -> Pushed:
    """Publish ``run`` (a finished run folder or its export; default: the newest train-ar run
    under ``root``, else the newest train-vae run) to ``repo_id`` (default: the recipe's
    ``hub.repo_id``), or with ``dry_run`` write what would be published to that folder.
    ``say`` hears which run it is, before anything else can fail."""
    found = find_run(run, root, kinds=("ar", "vae"), option="--run")
    if found.run is None:
        raise PushError(
            f"{run}: not a finished run (no export/config.json); pass a folder that "
            "train-ar or train-vae finished"
        )
    run_dir = found.run
    say(f"run: {run_dir} ({found.how})")
    if weights not in AR_FILES:
        raise PushError(f"--weights {weights}: expected ema, raw or both")
    recipe_path = run_dir / "export" / "recipe.toml"
    repo_id = repo_id or load_recipe(recipe_path).hub.repo_id
    if not repo_id:
        raise PushError(f"{recipe_path} sets no hub.repo_id; pass --repo-id USER/NAME")
    if not re.fullmatch(REPO_ID, repo_id):
        raise PushError(f"repo id '{repo_id}': expected USER/NAME, e.g. --repo-id me/sphere-b")
    options = dict(weights=weights, include_samples=include_samples)
    if dry_run is not None:
        return _dry_run(run_dir, repo_id, Path(dry_run), options)
    with tempfile.TemporaryDirectory(prefix=".push-to-hub-", dir=run_dir) as tmp:
        staged = stage(run_dir, repo_id, Path(tmp), link=True, **options)
        refuse_tokens(staged)
        files = sorted(staged.sources)
        url = upload(
            staged.folder,
            repo_id,
            private,
            revision,
            create_pr,
            f"Upload {run_dir.name} with spherear {__version__}",
        )
    return Pushed(repo_id, files, url)


def _dry_run(run_dir: Path, repo_id: str, out: Path, options: dict) -> Pushed:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise PushError(f"--dry-run {out}: already exists and is not empty; pass a new folder")
    tmp = out.parent / f".{out.name}.staging"
    shutil.rmtree(tmp, ignore_errors=True)  # left by a killed dry run
    tmp.mkdir(parents=True)
    try:
        staged = stage(run_dir, repo_id, tmp, **options)
        refuse_tokens(staged)
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Pushed(repo_id, sorted(staged.sources), str(out))
