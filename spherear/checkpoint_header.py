"""What a checkpoint holds, read from its metadata alone: no torch import, no tensor bytes.

Commands that load a large checkpoint check their arguments against it first: the authors'
SphereAR-B file is about 2 GB and takes many seconds to load, while its class count, its
kind (VAE only or full) and its weights (EMA, raw) are known from a few kilobytes. For our
export folders that is ``config.json``; for a ``torch.save`` file it is the pickle inside the
zip archive, read here by an unpickler that knows tensors only by their shapes and refuses
every global outside a short list, so that no code from the file ever runs.
"""

from __future__ import annotations

import argparse
import pickle
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

from spherear.config import Recipe, SampleConfig, VAEConfig, recipe_from_dict
from spherear.errors import SpherearError
from spherear.files import DamagedError, check_zip_inflation, read_json

FORMAT_NAME = "spherear"
FORMAT_VERSION = 2
# The 2D RoPE rule of spherear.models.transformer, recorded in every export: the AR model's
# table is not saved with its weights, so an export made under another rule (spherear 0.1
# put token (r, c) at (r + 1, c + 1), rows first) would load fine and sample garbage.
ROPE_CONVENTION = "2d-centre-x-first"
# which AR weights: the exponential moving average (what sampling uses by default) or the raw
# ones; the authors' files keep them under "ema" and "model"
Weights = Literal["ema", "raw"]


class CheckpointError(SpherearError):
    """A file that is not a usable checkpoint; the message says which and why."""


def check_weights(weights: str) -> None:
    if weights not in get_args(Weights):
        raise ValueError(f"weights must be 'ema' or 'raw', got {weights!r}")


@dataclass(frozen=True)
class TensorInfo:
    """A tensor of a ``torch.save`` file, known by its shape alone."""

    shape: tuple[int, ...]


@dataclass
class Header:
    """The facts about a checkpoint that arguments are checked against."""

    path: str
    kind: str  # "vae" (the S-VAE only) or "ar" (S-VAE + SphereAR)
    num_classes: int | None
    weights: tuple[Weights, ...]  # which it holds for the AR model
    sample: SampleConfig = field(default_factory=SampleConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)  # the authors' files: the 256px S-VAE


def _rebuild_tensor(storage, offset, size, *rest) -> TensorInfo:
    return TensorInfo(tuple(size))


def _rebuild_parameter(data, *rest):
    return data


class _Dict(OrderedDict):
    """State dicts pickle their ``_metadata`` as an attribute, which a plain dict lacks."""


class _Unpickler(pickle.Unpickler):
    # the globals a torch.save of tensors, state dicts and an argparse.Namespace uses
    ALLOWED = {
        ("collections", "OrderedDict"): _Dict,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("argparse", "Namespace"): argparse.Namespace,
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return self.ALLOWED[module, name]
        if module == "torch" and name.endswith("Storage"):
            return name
        raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed")

    def persistent_load(self, pid):
        return None  # tensor bytes: never read


def read_pickled(path: str | Path) -> dict | None:
    """The object a ``torch.save`` zip file holds, with every tensor a ``TensorInfo``;
    None for torch's legacy (pre-zip) format, which has no separate pickle to read."""
    path = Path(path)
    if not zipfile.is_zipfile(path):
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            check_zip_inflation(path, archive)
            name = next((n for n in archive.namelist() if n.endswith("/data.pkl")), None)
            if name is None:
                raise CheckpointError(f"{path}: a zip file, but no torch checkpoint (no data.pkl)")
            with archive.open(name) as f:
                return _Unpickler(f).load()
    except DamagedError as e:
        raise CheckpointError(str(e)) from None
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path}: refused to unpickle it ({e}); only tensors, plain containers and "
            "argparse.Namespace are allowed, so this is not a SphereAR checkpoint"
        ) from None
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({e})") from None


def read_export_config(folder: Path) -> tuple[dict, Recipe]:
    """The config.json of an export folder and the recipe it holds, refused in one line when
    it is damaged or was written for an AR model with another RoPE rule."""
    path = folder / "config.json"
    config = read_json(path, "re-export the run (rerun its train-vae or train-ar)")
    if not isinstance(config, dict) or config.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{path}: not a spherear export config (no format 'spherear')")
    version = config.get("format_version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise CheckpointError(
            f"{path}: 'format_version' must be a positive integer, got {version!r}"
        )
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: format_version {version} was written by a newer spherear (this one reads "
            f"up to {FORMAT_VERSION}); upgrade spherear (pip install -U spherear) to load it"
        )
    if config.get("kind") not in ("vae", "ar") or not isinstance(config.get("recipe"), dict):
        raise CheckpointError(f"{path}: needs 'kind' ('vae' or 'ar') and a 'recipe' table")
    recipe = recipe_from_dict(config["recipe"], str(path))
    if config["kind"] == "ar" and recipe.ar is None:
        raise CheckpointError(f"{path}: kind 'ar' but the recipe has no [ar] section")
    rope = config.get("rope")
    if config["kind"] == "ar" and rope != ROPE_CONVENTION:
        made = f"rope '{rope}'" if rope is not None else "no 'rope' entry (spherear 0.1)"
        raise CheckpointError(
            f"{path}: {made}, so its AR model was trained with another 2D RoPE table than "
            f"this spherear's '{ROPE_CONVENTION}' and would sample noise; retrain it with "
            "`spherear train-ar` (in a new run.output_dir), or sample it with the spherear "
            "version that made it"
        )
    return config, recipe


def _export_header(folder: Path) -> Header:
    config, recipe = read_export_config(folder)
    if config["kind"] == "vae":
        return Header(str(folder), "vae", None, (), recipe.sample, recipe.vae)
    weights = tuple(w for w, name in (("ema", "ar.safetensors"), ("raw", "ar_raw.safetensors"))
                    if (folder / name).is_file())  # fmt: skip
    return Header(str(folder), "ar", recipe.ar.num_classes, weights, recipe.sample, recipe.vae)


def _authors_header(path: Path) -> Header | None:
    obj = read_pickled(path)
    if obj is None:
        return None
    model = obj.get("model") if isinstance(obj, dict) else None
    if not isinstance(model, dict):
        raise CheckpointError(
            f"{path}: expected the authors' format, a dict with a 'model' state dict "
            "(and 'ema', 'args'); this file has none"
        )
    classes = model.get("cls_embedding.weight")
    if not isinstance(classes, TensorInfo):
        return Header(str(path), "vae", None, ())
    weights = ("ema", "raw") if isinstance(obj.get("ema"), dict) and obj["ema"] else ("raw",)
    return Header(str(path), "ar", classes.shape[0] - 1, weights)


def export_folder(path: Path) -> Path | None:
    """The export folder ``path`` names (the folder, its config.json or a run folder that
    holds one), None for a file that may be the authors'; a folder that holds no export is
    refused, naming what it is."""
    if path.name == "config.json" and path.is_file():
        return path.parent
    if not path.is_dir():
        return None
    if (path / "config.json").is_file():
        return path
    if (path / "recipe.toml").is_file() and (path / "export" / "config.json").is_file():
        return path / "export"
    if (path / "state.json").is_file() or path.parent.name == "checkpoints":
        raise CheckpointError(
            f"{path}: a training checkpoint (the state to resume a run), not an export; pass "
            f"the run folder ({path.parent.parent}) or its export/, written when training ends"
        )
    raise CheckpointError(
        f"{path}: a folder without a spherear config.json, so not an export; pass an export "
        "folder (a run's export/), a run folder, or the authors' .pt file"
    )


def read_header(path: str | Path) -> Header | None:
    """The header of an export folder (or its config.json) or of an authors' ``.pt``; None
    where it cannot be read cheaply (not a file, torch's legacy format), so that the full
    load gives its own message."""
    path = Path(path)
    folder = export_folder(path)
    if folder is not None:
        return _export_header(folder)
    return _authors_header(path) if path.is_file() else None
