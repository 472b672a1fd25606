"""Model files: our format (safetensors + config.json) and the authors' released ``.pt`` files.

Our format is a folder::

    config.json        {"format": "spherear", "format_version": 2, "kind": "vae" | "ar",
                        "rope": "2d-centre-x-first", "recipe": {...}}
    recipe.toml        the same recipe, for people
    vae.safetensors    the S-VAE
    ar.safetensors     the AR model, EMA weights (absent for a VAE-only export)
    ar_raw.safetensors the AR model, raw weights (optional)

The authors' files are ``torch.save`` dicts with ``model``, ``ema``, ``args`` (an
``argparse.Namespace``) and training state. They are read with ``weights_only=True`` so
that no code runs while unpickling. Their key names differ from ours in four places only,
listed in ``AUTHORS_KEY_RENAMES``.

An AR export records the 2D RoPE rule its model was trained with (``rope``): the AR model's
table is not saved with its weights, so an export without the rule of this version (one made
by spherear 0.1) is refused rather than sampled with positions it never saw. A VAE export
carries its table in ``vae.safetensors`` and loads whatever rule made it.

``load_checkpoint`` and ``inspect_checkpoint`` also take ``hf://USER/REPO[@REVISION][/FILE]``
addresses (``spherear.hub_files``), read from the Hugging Face cache like any local path.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from spherear.checkpoint_header import (
    FORMAT_NAME,
    FORMAT_VERSION,
    ROPE_CONVENTION,
    CheckpointError,
    Weights,
    check_weights,
    export_folder,
    read_export_config,
    read_header,
)
from spherear.config import ARConfig, Recipe, VAEConfig, recipe_to_dict, save_recipe
from spherear.files import (
    DamagedError,
    atomic_write,
    check_record,
    check_safetensors,
    file_record,
    load_torch_file,
    new_folder,
    publish,
    safetensors_header,
    write_json,
)
from spherear.hub_files import REPO_ID, resolve
from spherear.models import build_ar, build_vae
from spherear.models.ar import SphereAR
from spherear.models.registry import AR_SIZES, spell_out
from spherear.models.token_space import normalisation
from spherear.models.transformer import rope_table_2d
from spherear.models.vae import SphericalVAE

# (authors' prefix, our prefix). Theirs wraps the conv stacks in Sequentials whose other
# entries are parameter-free reshapes, and the head MLP in a ``net`` attribute.
AUTHORS_KEY_RENAMES: list[tuple[str, str]] = [
    ("vae.encoder.patchify.0.net.", "vae.encoder.down."),
    ("vae.decoder.unpatchify.1.net.", "vae.decoder.up."),
    ("vae.decoder.conv_in.1.", "vae.decoder.conv_in."),
    ("head.net.", "head."),
]


def authors_to_ours(key: str) -> str:
    for theirs, ours in AUTHORS_KEY_RENAMES:
        if key.startswith(theirs):
            return ours + key[len(theirs) :]
    return key


def ours_to_authors(key: str) -> str:
    for theirs, ours in AUTHORS_KEY_RENAMES:
        if key.startswith(ours):
            return theirs + key[len(ours) :]
    return key


@dataclass
class Loaded:
    """What a checkpoint gave: the recipe that rebuilds it and the models it holds."""

    recipe: Recipe
    vae: SphericalVAE
    ar: SphereAR | None
    description: str


@dataclass
class CheckpointInfo:
    path: str
    origin: str  # "spherear" or "authors"
    kind: str  # "vae" or "full" (VAE + AR)
    size: str | None
    has_ema: bool
    num_classes: int | None = None
    epochs: int | None = None
    variant: str = ""  # the comparison keys, for a spherear export

    def describe(self) -> str:
        who = "spherear export" if self.origin == FORMAT_NAME else "authors' release format"
        what = "VAE only" if self.kind == "vae" else f"full SphereAR-{self.size} (VAE + AR)"
        ema = "EMA weights present" if self.has_ema else "no EMA weights"
        parts = [f"{self.path}: {who}, {what}, {ema}"]
        if self.num_classes is not None:
            parts.append(f"{self.num_classes} classes")
        if self.epochs is not None:
            parts.append(f"trained {self.epochs} epochs")
        if self.variant:
            parts.append(self.variant)
        return "; ".join(parts)


def describe_variant(recipe: Recipe) -> str:
    """The choices of the paper's comparisons that ``recipe`` makes, in one phrase."""
    vae = recipe.vae
    words = [f"{vae.posterior.replace('_', '-')} posterior", f"{vae.backbone} VAE backbone"]
    if recipe.ar is not None and vae.posterior == "gaussian":
        scale = recipe.ar.latent_scale
        scaled = f" (latent scale {scale:.4g})" if scale is not None else ""
        words.append(f"tokens: {recipe.ar.token_space}{scaled}")
    if recipe.ar is not None:
        words.append(f"sampling normalises {normalisation(recipe.sample, recipe.ar)}")
    return ", ".join(words)


# ---------------------------------------------------------------------------------------
# Building models without paying for a random init that loading overwrites


# Big models are built on the meta device, skipping their random init. Small ones are not:
# the meta device's first use in a process imports torch._dynamo, about 3 s on a CPU, more
# than initialising 20M parameters takes.
META_ABOVE = 20_000_000


def _empty(build, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """The model ``build`` makes, with weights about to be overwritten by ``state``."""
    if sum(v.numel() for v in state.values()) < META_ABOVE:
        with torch.random.fork_rng(devices=[]):  # loading must not move the global RNG
            return build()
    with torch.device("meta"):
        model = build()
    return model.to_empty(device="cpu")


def _refuse_mismatches(problems: list[str], where) -> None:
    if problems:
        more = f"; and {len(problems) - 5} more" if len(problems) > 5 else ""
        raise CheckpointError(f"{where}: does not fit its recipe: {'; '.join(problems[:5])}{more}")


def _check_values(model: torch.nn.Module, state: dict[str, torch.Tensor], where) -> None:
    """Each tensor has the model's kind of dtype (floating, complex or integer) and finite
    values: load_state_dict would cast an integer tensor silently, and NaN weights sample
    black images without a word."""
    expected = model.state_dict()
    kind = lambda t: (t.dtype.is_floating_point, t.dtype.is_complex)  # noqa: E731
    for key, value in state.items():
        if kind(value) != kind(expected[key]):
            raise CheckpointError(
                f"{where}: '{key}' is {value.dtype}, the model needs {expected[key].dtype}; "
                "the file was altered or is not a spherear export: download or re-export it"
            )
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise CheckpointError(
                f"{where}: '{key}' holds NaN or infinite values, so every sample would be "
                "garbage; use an earlier checkpoint of the run or retrain it"
            )


def _load_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], where) -> None:
    found = {k: tuple(v.shape) for k, v in state.items()}
    _refuse_mismatches(_mismatches(_shapes(model), found), where)
    _check_values(model, state, where)
    model.load_state_dict(state, strict=True)
    if isinstance(model, SphereAR):
        model.reset_buffers()
    model.eval()


def _mismatches(expected: dict[str, torch.Size], found: dict[str, tuple]) -> list[str]:
    out = [f"missing '{k}'" for k in expected if k not in found]
    out += [f"unexpected '{k}'" for k in found if k not in expected]
    out += [
        f"'{k}' has shape {tuple(found[k])}, expected {tuple(s)}"
        for k, s in expected.items()
        if k in found and tuple(found[k]) != tuple(s)
    ]
    return out


def _shapes(model: torch.nn.Module, prefix: str = "") -> dict[str, torch.Size]:
    return {prefix + k: v.shape for k, v in model.state_dict().items()}


def _meta_shapes(recipe: Recipe) -> dict[str, torch.Size]:
    """Our key -> shape for the VAE (prefixed ``vae.``) and, if present, the AR model."""
    with torch.device("meta"):
        shapes = _shapes(build_vae(recipe), "vae.")
        if recipe.ar is not None:
            shapes.update(_shapes(build_ar(recipe)))
    return shapes


# ---------------------------------------------------------------------------------------
# The authors' release


def _one_line(e: Exception, limit: int = 200) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_authors_file(path: str | Path) -> dict:
    """``torch.load`` that unpickles tensors, containers and argparse.Namespace only."""
    path = Path(path)
    try:
        obj = load_torch_file(path, (argparse.Namespace,), "torch checkpoint")
    except DamagedError as e:
        raise CheckpointError(str(e)) from None
    if not isinstance(obj, dict) or not isinstance(obj.get("model"), dict):
        raise CheckpointError(
            f"{path}: expected the authors' format, a dict with a 'model' state dict "
            "(and 'ema', 'args'); this file has none"
        )
    for part in ("model", "ema"):
        values = obj.get(part) if isinstance(obj.get(part), dict) else {}
        odd = next((k for k, v in values.items() if not isinstance(v, torch.Tensor)), None)
        if odd is not None:
            raise CheckpointError(f"{path}: '{part}' entry '{odd}' is not a tensor")
    return obj


def _authors_recipe(shapes: dict[str, tuple], size: str | None) -> Recipe:
    """The recipe of a released model: 256px S-VAE, and the AR size if there is one."""
    if size is None:
        return Recipe(vae=VAEConfig())
    num_classes = shapes.get("cls_embedding.weight", (1001,))[0] - 1
    return Recipe(vae=VAEConfig(), ar=ARConfig(size=size, num_classes=num_classes))


NO_MATCH = "none"


def _guess_size(found: dict[str, tuple]) -> tuple[str | None, int]:
    """The registry size (None = VAE only) whose key set is closest to ``found``, or
    NO_MATCH when even the closest misses most of its keys."""
    best, best_count, best_total = None, math.inf, 1
    for size in [None, *AR_SIZES]:
        expected = _meta_shapes(_authors_recipe(found, size))
        count = len(_mismatches(expected, found))
        if count < best_count:
            best, best_count, best_total = size, count, len(expected)
    return (best if best_count < best_total / 2 else NO_MATCH), best_count


def _no_match(path) -> CheckpointError:
    return CheckpointError(
        f"{path}: a torch checkpoint, but its 'model' keys match no SphereAR model "
        "(expected the authors' vae.pt or SphereAR_{B,L,H}.pt)"
    )


def _label(size: str | None) -> str:
    if size == NO_MATCH:
        return "no SphereAR model"
    return "a VAE-only checkpoint" if size is None else f"SphereAR-{size}"


def _authors_state(obj: dict, weights: Weights) -> tuple[dict[str, torch.Tensor], int]:
    """Our key -> tensor: their ``model`` entry (the raw weights), with the ``ema`` entry's
    tensors over them for "ema"; also how many came from the EMA."""
    state = dict(obj["model"])
    ema = obj.get("ema") if weights == "ema" and isinstance(obj.get("ema"), dict) else {}
    state.update(ema)  # EMA covers the trained parts; the frozen VAE may be absent from it
    return {authors_to_ours(k): v for k, v in state.items()}, len(ema)


def load_authors_checkpoint(
    path: str | Path, weights: Weights = "ema", expect: str | None = "auto"
) -> Loaded:
    """Load an authors' ``.pt`` (VAE-only or full) into our modules, strictly.

    ``expect``: "auto" (detect), "vae" or a registry size such as "B". A file whose keys or
    shapes do not match is refused, naming up to five mismatches and the size it looks like.
    """
    check_weights(weights)
    obj = read_authors_file(path)
    state, from_ema = _authors_state(obj, weights)
    found = {k: tuple(v.shape) for k, v in state.items()}
    guess, _ = _guess_size(found)
    if expect == "auto" and guess == NO_MATCH:
        raise _no_match(path)
    target = guess if expect == "auto" else (None if expect == "vae" else expect)
    recipe = _authors_recipe(found, target)
    problems = _mismatches(_meta_shapes(recipe), found)
    if problems:
        listed = "; ".join(problems[:5]) + (
            f"; and {len(problems) - 5} more" if len(problems) > 5 else ""
        )
        raise CheckpointError(
            f"{path}: not {_label(target)} in the authors' format: {listed}. "
            f"It looks most like {_label(guess)}"
        )
    _check_rope(state, recipe, path)
    vae_state = {k[4:]: v for k, v in state.items() if k.startswith("vae.")}
    vae = _empty(lambda: build_vae(recipe), vae_state)
    _load_strict(vae, vae_state, path)
    ar = None
    if recipe.ar is not None:
        ar_state = {k: v for k, v in state.items() if not k.startswith("vae.")}
        ar = _empty(lambda: build_ar(recipe), ar_state)
        _load_strict(ar, ar_state, path)
    used = f"EMA weights for {from_ema} of {len(state)} tensors" if from_ema else "raw weights"
    return Loaded(recipe, vae, ar, f"{path} ({_label(target)}, authors' format, {used})")


def _check_rope(state: dict[str, torch.Tensor], recipe: Recipe, path) -> None:
    """The VAE's saved RoPE table pins down the 2D convention the AR model (whose table is
    not saved) must share; say so loudly if ours differs."""
    saved = state.get("vae.encoder.freqs_cis")
    head_dim = recipe.vae.width // recipe.vae.num_heads
    ours = rope_table_2d(recipe.vae.grid_size, head_dim, recipe.vae.num_registers)
    if saved is not None and not torch.allclose(saved.float(), ours, atol=1e-4):
        warnings.warn(
            f"{path}: the saved VAE RoPE table differs from spherear's 2D RoPE convention; "
            "the VAE uses the saved table, but AR samples may be degraded. Please report this.",
            stacklevel=3,
        )


# ---------------------------------------------------------------------------------------
# Our format


def save_pretrained(
    out_dir: str | Path,
    recipe: Recipe,
    vae: SphericalVAE,
    ar_state: dict[str, torch.Tensor] | None = None,
    ar_raw_state: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write a loadable export. ``ar_state`` is what sampling uses (normally the EMA). The
    folder appears whole or not at all, and ``config.json`` records each file's size and
    sha256, so a damaged copy is named when it is loaded."""
    recipe = spell_out(recipe)
    out = Path(out_dir)
    tmp = new_folder(out)
    contiguous = lambda sd: {k: v.detach().contiguous().cpu() for k, v in sd.items()}  # noqa: E731
    weights = {"vae.safetensors": vae.state_dict(), "ar.safetensors": ar_state,
               "ar_raw.safetensors": ar_raw_state}  # fmt: skip
    files = {
        name: atomic_write(tmp / name, save(contiguous(state)), "export/weights", record=True)
        for name, state in weights.items()
        if state is not None
    }
    files["recipe.toml"] = file_record(save_recipe(recipe, tmp))
    config = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "kind": "ar" if ar_state is not None else "vae",
        "rope": ROPE_CONVENTION,
        "recipe": recipe_to_dict(recipe),
        "files": files,
    }
    write_json(tmp / "config.json", config, "export/config")
    return publish(tmp, out, "export/publish")


def _check_export(folder: Path, config: dict, names: list[str]) -> None:
    """Each of ``names`` has the size and sha256 that ``config.json`` recorded (exports
    written before records existed: the size their safetensors header needs)."""
    records = config.get("files") if isinstance(config.get("files"), dict) else None
    for name in names:
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"{path}: missing from the export; re-export the run")
        problem = check_record(path, records[name]) if records and name in records else (
            check_safetensors(path) if name.endswith(".safetensors") else None
        )  # fmt: skip
        if problem:
            raise CheckpointError(
                f"{path}: damaged ({problem}); copy the export again, or re-export it by "
                "rerunning the run's train-vae/train-ar"
            )


def _load_file(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(path)
    except Exception as e:  # safetensors raises its own error types for damaged files
        raise CheckpointError(f"{path}: not a readable safetensors file ({_one_line(e)})") from None


def _check_headers(folder: Path, recipe: Recipe, ar_name: str | None) -> None:
    """The shapes in the safetensors headers fit the recipe's models, checked on the meta
    device before any model is built: a config.json that asks for a model far larger than
    its weights is refused without allocating it."""
    expected = _meta_shapes(recipe)
    files = {"vae.safetensors": {k[4:]: s for k, s in expected.items() if k.startswith("vae.")}}
    if ar_name is not None:
        files[ar_name] = {k: s for k, s in expected.items() if not k.startswith("vae.")}
    for name, shapes in files.items():
        try:
            header, _ = safetensors_header(folder / name)
        except DamagedError as e:
            raise CheckpointError(str(e)) from None
        found = {k: t["shape"] for k, t in header.items()}
        _refuse_mismatches(_mismatches(shapes, found), folder / name)


def load_pretrained(path: str | Path, weights: Weights = "ema") -> Loaded:
    check_weights(weights)
    folder = export_folder(Path(path))
    if folder is None:
        raise CheckpointError(f"{path}: no spherear config.json here; pass an export folder")
    config, recipe = read_export_config(folder)
    name = "ar.safetensors" if weights == "ema" else "ar_raw.safetensors"
    if config["kind"] == "ar" and not (folder / name).is_file():
        raise CheckpointError(f"{folder}: no {name}; this export has no {weights} weights")
    _check_export(folder, config, ["vae.safetensors"] + ([name] if config["kind"] == "ar" else []))
    _check_headers(folder, recipe, name if config["kind"] == "ar" else None)
    vae_state = _load_file(folder / "vae.safetensors")
    vae = _empty(lambda: build_vae(recipe), vae_state)
    _load_strict(vae, vae_state, folder / "vae.safetensors")
    ar = None
    if config["kind"] == "ar":
        ar_state = _load_file(folder / name)
        ar = _empty(lambda: build_ar(recipe), ar_state)
        _load_strict(ar, ar_state, folder / name)
    return Loaded(recipe, vae, ar, f"{folder} (spherear export, {weights} weights)")


def load_checkpoint(path: str | Path, weights: Weights = "ema") -> Loaded:
    """Our export folder or an authors' ``.pt``, whichever ``path`` is; either may be an
    ``hf://USER/REPO[@REVISION][/FILE]`` address, whose pinned commit the description names."""
    local, pinned = resolve(path)
    if export_folder(local) is not None:
        loaded = load_pretrained(local, weights)
    else:
        loaded = load_authors_checkpoint(local, weights)
    if pinned is not None:
        loaded.description = f"{pinned}, cached as {loaded.description}"
    return loaded


def from_pretrained(name: str | Path, weights: Weights = "ema") -> Loaded:
    """A model from a hub repo ("USER/REPO", "USER/REPO@REVISION" or any ``hf://`` address),
    a local spherear export folder or an authors' ``.pt``; ``spherear.from_pretrained``."""
    text = str(name)
    bare_repo = re.fullmatch(rf"{REPO_ID}(@\S+)?", text) and not Path(text).exists()
    return load_checkpoint(f"hf://{text}" if bare_repo else text, weights)


def _same_vae(path, found: VAEConfig, expected: VAEConfig) -> None:
    differ = [
        f"{f.name} {getattr(found, f.name)!r} there, {getattr(expected, f.name)!r} in the recipe"
        for f in dataclasses.fields(VAEConfig)
        if getattr(found, f.name) != getattr(expected, f.name)
    ]
    if differ:
        raise CheckpointError(
            f"{path}: its S-VAE is not the recipe's [vae] ({'; '.join(differ)}); point "
            "train.vae_checkpoint (or --vae) at the S-VAE the recipe describes, or fix [vae]"
        )


def load_vae(path: str | Path, expected: VAEConfig) -> Loaded:
    """The S-VAE of an export or an authors' file, refused in one line when it is not
    ``expected``: from its header, before any weights load, where the format allows."""
    local, _ = resolve(path)
    header = read_header(local)
    if header is not None:
        _same_vae(path, header.vae, expected)
    loaded = load_checkpoint(path)
    _same_vae(path, loaded.recipe.vae, expected)
    return loaded


def inspect_checkpoint(path: str | Path) -> CheckpointInfo:
    """What a file (or ``hf://`` address) holds, read from its keys and shapes without
    building a model."""
    local, pinned = resolve(path)
    info = _inspect_local(local)
    if pinned is not None:
        info.path = pinned
    return info


def _inspect_local(path: Path) -> CheckpointInfo:
    folder = export_folder(path)
    if folder is not None:
        config, recipe = read_export_config(folder)
        _check_export(folder, config, sorted(p.name for p in folder.glob("*.safetensors")))
        ar_files = [n for n in ("ar.safetensors", "ar_raw.safetensors") if (folder / n).is_file()]
        _check_headers(folder, recipe, ar_files[0] if config["kind"] == "ar" and ar_files else None)
        size = recipe.ar.size if recipe.ar is not None else None
        return CheckpointInfo(
            str(folder), FORMAT_NAME, "full" if config["kind"] == "ar" else "vae", size,
            (folder / "ar.safetensors").is_file(),
            recipe.ar.num_classes if recipe.ar is not None else None,
            variant=describe_variant(recipe),
        )  # fmt: skip
    obj = read_authors_file(path)
    found = {authors_to_ours(k): tuple(v.shape) for k, v in obj["model"].items()}
    size, mismatches = _guess_size(found)
    if size == NO_MATCH:
        raise _no_match(path)
    if mismatches:
        raise CheckpointError(
            f"{path}: close to {_label(size)} but {mismatches} keys or shapes differ; "
            f"`load_authors_checkpoint` lists them"
        )
    epochs = obj.get("epochs")
    return CheckpointInfo(
        str(path), "authors", "vae" if size is None else "full", size,
        isinstance(obj.get("ema"), dict) and len(obj["ema"]) > 0,
        found["cls_embedding.weight"][0] - 1 if size is not None else None,
        epochs if isinstance(epochs, int) else None,
    )  # fmt: skip
