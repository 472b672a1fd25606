"""``hf://USER/REPO[@REVISION][/FILE]`` addresses: checkpoints on the Hugging Face hub.

An address resolves to a local path in the Hugging Face cache, so the cache and
``HF_HUB_OFFLINE=1`` work as they do for every other hub library. A FILE (a last part with a
dot, e.g. ``SphereAR_B.pt``) is downloaded alone; no FILE, or a folder, means a spherear
export (``config.json``, ``recipe.toml`` and its safetensors). What is downloaded here is
only ever read as safetensors or with ``torch.load(weights_only=True)`` by the loaders.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from spherear.errors import SpherearError

# the hub's rule for user and repo names: letters, digits, "-", "_" and ".", neither first
# nor last "-" or ".", no "--" or ".."; so "hf://../../etc/passwd" is no address
NAME = r"(?![.-])(?:(?!--|\.\.)[\w.-]){1,96}(?<![.-])"
REPO_ID = rf"{NAME}/{NAME}"
# ``Path("hf://a/b")`` collapses the double slash, and the CLI's checkpoint options are Paths,
# so "hf:/a/b" must mean the same address.
_ADDRESS = re.compile(
    rf"^hf:/{{1,2}}(?P<repo>{REPO_ID})(?:@(?P<revision>refs/pr/\d+|[^/]+))?(?:/(?P<file>.+))?$"
)
EXPORT_FILES = ["config.json", "recipe.toml", "*.safetensors"]


class HubError(SpherearError):
    """An ``hf://`` address that cannot be resolved; the message says how to fix it."""


@dataclass(frozen=True)
class HubAddress:
    repo_id: str
    revision: str | None = None
    path: str = ""  # a file or folder inside the repo; "" is the repo's top folder

    def __str__(self) -> str:
        revision = f"@{self.revision}" if self.revision else ""
        return f"hf://{self.repo_id}{revision}" + (f"/{self.path}" if self.path else "")

    @property
    def names_config(self) -> bool:
        return self.path.rsplit("/", 1)[-1] == "config.json"

    @property
    def is_file(self) -> bool:
        # config.json names the export folder that holds it: fetch the whole export
        return "." in self.path.rsplit("/", 1)[-1] and not self.names_config

    @property
    def folder(self) -> str:
        """The export folder inside the repo ("" for its top) that a non-file names."""
        return self.path.removesuffix("config.json").rstrip("/") if self.names_config else self.path


def parse_address(text: str | Path) -> HubAddress | None:
    """The hub address ``text`` names, or None if it is a plain local path."""
    text = str(text)
    if not text.startswith("hf:/"):
        return None
    found = _ADDRESS.match(text.rstrip("/"))
    if found is None or ".." in (found["file"] or "").split("/"):
        raise HubError(
            f"{text}: not a hub address; expected hf://USER/REPO[@REVISION][/FILE] with names "
            "of letters, digits, '-', '_' and '.', e.g. hf://guolinke/SphereAR/SphereAR_B.pt"
        )
    return HubAddress(found["repo"], found["revision"], found["file"] or "")


def _export_patterns(address: HubAddress) -> list[str]:
    return [f"{address.folder}/{p}" if address.folder else p for p in EXPORT_FILES]


def _fetch_command(address: HubAddress) -> str:
    revision = f" --revision {address.revision}" if address.revision else ""
    if address.is_file:
        return f"hf download {address.repo_id} {address.path}{revision}"
    include = " ".join(f"--include '{p}'" for p in _export_patterns(address))
    return f"hf download {address.repo_id} {include}{revision}"


def _download(address: HubAddress) -> Path:
    from huggingface_hub import constants, hf_hub_download, snapshot_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    offline = constants.HF_HUB_OFFLINE
    try:
        if address.is_file:
            return Path(
                hf_hub_download(
                    address.repo_id,
                    address.path,
                    revision=address.revision,
                    local_files_only=offline,
                )
            )
        snapshot = snapshot_download(
            address.repo_id,
            revision=address.revision,
            allow_patterns=_export_patterns(address),
            local_files_only=offline,
        )
        return Path(snapshot, address.folder)
    except GatedRepoError:
        raise HubError(
            f"{address}: a gated repository; accept its terms on huggingface.co/"
            f"{address.repo_id}, then log in (`hf auth login`) or set HF_TOKEN"
        ) from None
    except RepositoryNotFoundError:
        raise HubError(
            f"{address}: no repository {address.repo_id} on the hub, or it is private "
            "(log in with `hf auth login` or set HF_TOKEN)"
        ) from None
    except RevisionNotFoundError:
        raise HubError(
            f"{address}: {address.repo_id} has no revision '{address.revision}'"
        ) from None
    except LocalEntryNotFoundError:
        why = "HF_HUB_OFFLINE=1 is set" if offline else "the hub could not be reached"
        raise HubError(
            f"{address}: not in the Hugging Face cache and {why}; fetch it with "
            f"`{_fetch_command(address)}` while online"
        ) from None
    except HFValidationError as e:
        raise HubError(f"{address}: not a valid hub address ({_first_line(e)})") from None
    except EntryNotFoundError:
        raise HubError(
            f"{address}: {address.repo_id} has no file '{address.path}'"
            + (f" at revision {address.revision}" if address.revision else "")
        ) from None


def _first_line(e: Exception) -> str:
    return " ".join(str(e).split())[:160]


def _commit(local: Path, address: HubAddress) -> str:
    """The commit a cached path belongs to: its ``snapshots/<commit>`` folder."""
    inside = Path(address.path if address.is_file else address.folder)
    depth = len(inside.parts)
    return (local.parents[depth - 1] if depth else local).name


def resolve(path: str | Path) -> tuple[Path, str | None]:
    """``path`` as a local path, plus for a hub address the same address pinned to the commit
    it resolved to (``hf://USER/REPO@<commit>/FILE``), for run metadata."""
    address = parse_address(path)
    if address is None:
        return Path(path), None
    local = _download(address)
    if not address.is_file and not (local / "config.json").is_file():
        where = f"{address.repo_id}/{address.folder}" if address.folder else address.repo_id
        raise HubError(
            f"{address}: {where} holds no spherear export (config.json); name a checkpoint "
            "file instead, e.g. hf://guolinke/SphereAR/SphereAR_B.pt"
        )
    pinned = HubAddress(address.repo_id, _commit(local, address), address.path)
    return local, str(pinned)
