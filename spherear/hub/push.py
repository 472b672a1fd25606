"""``push-to-hub``: find the run, stage it (``spherear.hub.stage``), then either upload the
staged folder in one commit or, for ``--dry-run DIR``, keep it as DIR and upload nothing;
with ``--space`` the same for its Space (``spherear.hub.space``), kept as DIR-space.
``upload`` is the only function that talks to the hub: one ``create_repo`` and one
``upload_folder`` a repo.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from spherear.config import load_recipe
from spherear.hub import PushError
from spherear.hub.space import space_id, stage_space
from spherear.hub.stage import AR_FILES, Published, Staged, refuse_tokens, stage
from spherear.hub_files import REPO_ID
from spherear.runs import RUNS, find_run
from spherear.version import __version__


@dataclass
class Pushed:
    repo_id: str
    files: list[str]
    destination: str  # the dry-run folder, or the commit (or pull request) URL
    space_id: str | None = None  # with --space: the Space, its files and where they went
    space_files: list[str] = field(default_factory=list)
    space_destination: str = ""


def _first_line(e: Exception) -> str:
    return next(iter(str(e).strip().splitlines()), type(e).__name__)


def upload(
    folder: Path,
    repo_id: str,
    private: bool = False,
    revision: str | None = None,
    create_pr: bool = False,
    message: str = "Upload with spherear",
    repo_type: str = "model",
) -> str:
    """The one network step: create the repo if needed (and the branch ``revision``), then
    commit ``folder`` in one ``upload_folder``. The token comes from ``HF_TOKEN`` or the hub
    login inside huggingface_hub. ``repo_type`` "space" makes a Gradio Space. Returns the
    commit or pull-request URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi()
    try:
        sdk = {"space_sdk": "gradio"} if repo_type == "space" else {}
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type=repo_type, **sdk)
        if revision and not create_pr:
            api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type=repo_type)
        commit = api.upload_folder(
            repo_id=repo_id,
            repo_type=repo_type,
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
    space: bool = False,
    root: str | Path = RUNS,
    say: Callable[[str], None] = lambda message: None,
) -> Pushed:
    """Publish ``run`` (a finished run folder or its export; default: the newest train-ar run
    under ``root``, else the newest train-vae run) to ``repo_id`` (default: the recipe's
    ``hub.repo_id``), or with ``dry_run`` write what would be published to that folder;
    ``space`` also publishes (or writes, to ``dry_run``-space) the Space of the model.
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

    def model(folder: Path, link: bool = False) -> Staged:
        return stage(run_dir, repo_id, folder, weights, include_samples, link=link)

    def its_space(folder: Path) -> Staged:
        license = load_recipe(recipe_path).hub.license
        return stage_space(repo_id, None if create_pr else revision, license, folder)

    space_repo = space_id(repo_id) if space else None
    if dry_run is not None:
        dry_run = Path(dry_run)
        outs = {dry_run: model} | ({_beside(dry_run): its_space} if space else {})
        for out in outs:
            _check_empty(out)
        files = [_dry_run(out, write) for out, write in outs.items()]
        return Pushed(repo_id, files[0], str(dry_run), space_repo, files[1] if space else [],
                      str(_beside(dry_run)) if space else "")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix=".push-to-hub-", dir=run_dir) as tmp:
        for name in ("model", "space"):
            Path(tmp, name).mkdir()
        staged = model(Path(tmp) / "model", link=True)
        spaced = its_space(Path(tmp) / "space") if space else None
        for one in (staged, spaced):
            if one is not None:
                refuse_tokens(one)
        message = f"Upload {run_dir.name} with spherear {__version__}"
        url = upload(staged.folder, repo_id, private, revision, create_pr, message)
        pushed = Pushed(repo_id, sorted(staged.sources), url)
        if spaced is not None:
            pushed.space_id, pushed.space_files = space_repo, sorted(spaced.sources)
            pushed.space_destination = upload(spaced.folder, space_repo, private,
                                              message=message, repo_type="space")  # fmt: skip
    return pushed


def _beside(out: Path) -> Path:
    """Where a dry run keeps the Space: DIR-space beside DIR."""
    return out.parent / f"{out.name}-space"


def _check_empty(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise PushError(f"--dry-run {out}: already exists and is not empty; pass a new folder")


def _dry_run(out: Path, write: Callable[[Path], Staged]) -> list[str]:
    """Keep what ``write`` stages as ``out``; its files."""
    _check_empty(out)
    tmp = out.parent / f".{out.name}.staging"
    shutil.rmtree(tmp, ignore_errors=True)  # left by a killed dry run
    tmp.mkdir(parents=True)
    try:
        staged = write(tmp)
        refuse_tokens(staged)
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return sorted(staged.sources)
