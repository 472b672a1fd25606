"""The kinds of folder spherear writes, known by their marker files, and the check that no
command writes over one of its own inputs or into a folder of another kind.

Every output option (``--out``, ``--json``, ``run.output_dir``) is checked before any work:
a report written over the samples it scores, sample files inside an export, a run inside
the latent cache would each destroy or confuse something already made.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from spherear.errors import SpherearError
from spherear.files import check_output

# the files whose names mark a spherear folder, never to be taken by a report
MARKERS = {"config.json", "recipe.toml", "run.json", "info.json", "settings.json",
           "manifest.json", "samples.npz", "labels.npy", "state.json"}  # fmt: skip
RUN, EXPORT, PREPARED, CACHE, SAMPLES = (
    "a training run", "an export", "a prepared dataset", "a latent cache", "a sample set",
)  # fmt: skip
# what a folder of each kind holds below it in turn (a run its samples and export)
NESTS = {RUN: {EXPORT, SAMPLES, RUN}}


class OutputConflict(SpherearError):
    """An output that would overwrite an input or land in a folder of another kind."""


def _json_keys(path: Path) -> dict:
    """The top-level table of a small JSON file; {} for anything else."""
    try:
        if not path.is_file() or path.stat().st_size > 1 << 20:
            return {}
        value = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):
        return {}
    return value if isinstance(value, dict) else {}


def kind_of(folder: str | Path) -> tuple[str, str] | None:
    """(the kind of spherear folder ``folder`` is, the marker that says so), or None. Marker
    files are read, not just seen: a config.json or recipe.toml of someone else's project
    does not make it a spherear folder."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    if _json_keys(folder / "config.json").get("format") == "spherear":
        return EXPORT, "config.json"
    if "rope" in _json_keys(folder / "run.json"):
        return RUN, "run.json"
    if (folder / "recipe.toml").is_file() and (folder / "export" / "config.json").is_file():
        return RUN, "recipe.toml"
    if "settings" in _json_keys(folder / "info.json"):
        return PREPARED, "info.json"
    settings = _json_keys(folder / "settings.json")
    if "vae_sha256" in settings or (folder / "manifest.json").is_file():
        return CACHE, "settings.json"
    if "weights_sha256" in settings or (folder / "samples.npz").is_file():
        return SAMPLES, "settings.json"
    return None


def _same_or_inside(path: Path, other: Path) -> bool:
    return path == other or other in path.parents


def _absolute(path: str | Path) -> Path:
    return Path(os.path.realpath(path))


def _check_inputs(path: Path, option: str, inputs: Iterable[str | Path | None]) -> None:
    here = _absolute(path)
    for given in inputs:
        if given is None or str(given) == "" or "://" in str(given):
            continue
        source = _absolute(given)
        if _same_or_inside(here, source):
            raise OutputConflict(
                f"{option} {path}: would write over this command's input {given}; choose "
                "another path"
            )


def _check_ancestors(path: Path, kind: str, option: str) -> None:
    for parent in _absolute(path).parents:
        found = kind_of(parent)
        if found and kind not in NESTS.get(found[0], ()):
            raise OutputConflict(
                f"{option} {path}: inside {parent}, which is {found[0]} ({found[1]}); write "
                f"{kind} to a folder of its own"
            )


def check_output_folder(
    path: str | Path, kind: str, option: str, inputs: Iterable[str | Path | None] = ()
) -> None:
    """Before any work (and before its lock is taken): ``path`` can be written and become
    (or already is) ``kind``: it is no input of the command nor inside one, not a folder of
    another kind nor inside one, and for a run or a sample set not a folder that holds
    other spherear folders (a runs/ root). A prepared dataset and a latent cache refuse any
    other folder that is not empty themselves."""
    if not str(path).strip():
        raise OutputConflict(f"{option} is empty; name a folder for {kind}, e.g. runs/my_run")
    path = Path(path)
    check_output(path, option)
    _check_inputs(path, option, inputs)
    found = kind_of(path)
    if found is not None and found[0] != kind:
        raise OutputConflict(
            f"{option} {path}: is {found[0]} ({found[1]}), not {kind}; choose another path"
        )
    _check_ancestors(path, kind, option)
    if found is None and path.is_dir() and kind in (RUN, SAMPLES):
        inner = next(((p, kind_of(p)) for p in sorted(path.iterdir()) if kind_of(p)), None)
        if inner is not None:
            raise OutputConflict(
                f"{option} {path}: holds {inner[1][0]} ({inner[0]}), so it is not {kind}; "
                "choose a folder of its own"
            )


def check_output_file(path: str | Path, option: str, inputs: Iterable[str | Path | None]) -> None:
    """Before any work: the report file ``path`` overwrites no input of the command, no
    marker file of a spherear folder and nothing that is not a report, and does not land in
    an export, a prepared dataset or a latent cache."""
    path = Path(path)
    _check_inputs(path, option, inputs)
    if path.name in MARKERS:
        raise OutputConflict(
            f"{option} {path}: {path.name} marks a spherear folder; name the report otherwise"
        )
    if path.is_file() and path.suffix != ".json":
        raise OutputConflict(
            f"{option} {path}: exists and is not a .json report; choose another file"
        )
    found = kind_of(path.parent)
    if found is not None and found[0] in (EXPORT, PREPARED, CACHE):
        raise OutputConflict(
            f"{option} {path}: inside {path.parent}, which is {found[0]} ({found[1]}); "
            "write the report elsewhere"
        )
