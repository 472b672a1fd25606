"""Recipes: typed configuration read from TOML, overridden with ``--set section.key=value``.

A recipe is a tree of dataclasses. Loading validates every key and type, so a typo in a
recipe fails before any work starts, with a message that names the file, the key and the
nearest valid key. ``None`` in a field means "take it from the size registry" (see
``spherear.models.registry``) and is left out when a recipe is written back to TOML.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from spherear.errors import SpherearError
from spherear.files import atomic_write, read_text


class RecipeError(SpherearError):
    """A recipe that cannot be used; the message is one line naming the fix."""


def bounded(default: Any, low: float | None = None, high: float | None = None) -> Any:
    """A field whose value (each value, for lists) must lie in [low, high]."""
    return field(default=default, metadata={"range": (low, high)})


def check_head_dim(where: str, width: tuple[str, int], heads: tuple[str, int]) -> None:
    """Attention heads split the (named) ``width`` evenly, into a dimension that 2D RoPE can
    turn in pairs, half of them by x and half by y."""
    head_dim, rest = divmod(width[1], heads[1])
    if rest or head_dim % 4:
        raise RecipeError(
            f"{where}: {width[0]} {width[1]} / {heads[0]} {heads[1]} must give a head "
            "dimension divisible by 4 (2D RoPE splits it in x and y halves)"
        )


@dataclass
class RunConfig:
    name: str = "run"
    output_dir: str = "runs"
    seed: int = bounded(0, 0)


@dataclass
class VAEConfig:
    """The S-VAE tokenizer. ``channels`` are the conv widths from the image side; the last
    one is the transformer width, and each step between two entries halves the resolution."""

    resolution: int = bounded(256, 1)
    latent_dim: int = bounded(16, 2)
    channels: tuple[int, ...] = bounded((64, 64, 128, 256, 512), 4)
    num_heads: int = bounded(8, 1)
    encoder_depth: int = bounded(6, 0)
    decoder_depth: int = bounded(12, 0)
    num_registers: int = bounded(4, 0)
    # A linear path from each pixel patch to its token and back (not in the paper's
    # tokenizer): the code starts near a PCA of the patches, so a few hundred steps reach
    # a usable PSNR; the CNN learns what the linear code misses.
    patch_shortcut: bool = False

    @property
    def width(self) -> int:
        return self.channels[-1]

    @property
    def patch_size(self) -> int:
        return 2 ** (len(self.channels) - 1)

    @property
    def grid_size(self) -> int:
        return self.resolution // self.patch_size

    @property
    def num_tokens(self) -> int:
        return self.grid_size**2

    def check(self, where: str) -> None:
        if len(self.channels) < 2:
            raise RecipeError(f"{where}: vae.channels needs at least two entries, e.g. [64, 128]")
        if self.resolution % self.patch_size:
            raise RecipeError(
                f"{where}: vae.resolution {self.resolution} is not divisible by the patch size "
                f"{self.patch_size} that {len(self.channels) - 1} down-sampling stages give"
            )
        check_head_dim(where, ("vae width", self.width), ("vae.num_heads", self.num_heads))


@dataclass
class ARConfig:
    """The autoregressive transformer and its diffusion head. ``size`` picks a row of the
    registry; any architecture field set here overrides that row."""

    size: str = "B"
    depth: int | None = bounded(None, 1)
    num_heads: int | None = bounded(None, 1)
    width: int | None = bounded(None, 4)
    head_depth: int | None = bounded(None, 1)
    head_width: int | None = bounded(None, 1)
    head_groups: int | None = bounded(None, 1)
    # unset: the prepared data's class count (info.json); a value that disagrees is refused
    num_classes: int | None = bounded(None, 1)
    # the names of labels 0..num_classes-1; unset: the data's (train-ar records them)
    class_names: tuple[str, ...] = ()
    num_class_tokens: int = bounded(16, 1)
    class_dropout: float = bounded(0.1, 0, 1)
    diff_batch_mul: int = bounded(4, 1)


@dataclass
class TrainConfig:
    lr: float = bounded(3e-4, 0)
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    warmup_steps: int = bounded(20_000, 0)
    min_lr: float = bounded(1e-5, 0)
    betas: tuple[float, float] = bounded((0.9, 0.95), 0, 1)
    weight_decay: float = bounded(0.05, 0)
    grad_clip: float = bounded(1.0, 0)
    global_batch_size: int = bounded(512, 1)
    epochs: int = bounded(400, 1)
    ema_decay: float = bounded(0.9999, 0, 1)
    mixed_precision: Literal["no", "bf16"] = "bf16"
    micro_batch_size: int = bounded(64, 1)  # per process and step; accumulation fills the rest
    max_steps: int = bounded(0, 0)  # 0: train for `epochs`
    inputs: Literal["latents", "images"] = "latents"  # AR: the latent cache or on-the-fly encoding
    vae_checkpoint: str = ""  # AR: the trained S-VAE (export folder or the authors' vae.pt)
    grad_checkpointing: bool = False  # recompute each block's activations in backward
    compile: bool = False  # torch.compile the model (inductor, on a CPU too)
    fsdp: bool = False  # AR: shard with torch's fully_shard (spherear.train.sharding)
    num_workers: int = bounded(2, 0)
    log_every: int = bounded(10, 1)
    checkpoint_every: int = bounded(5000, 1)
    keep_checkpoints: int = bounded(3, 1)
    sample_every: int = bounded(10_000, 0)  # 0: no sample grids
    log_with: Literal["tensorboard", "wandb", "none"] = "tensorboard"


@dataclass
class VAELossConfig:
    l1_weight: float = bounded(1.0, 0)
    perceptual_weight: float = bounded(1.0, 0)
    disc_weight: float = bounded(0.5, 0)
    disc_start: int = bounded(20_000, 0)
    disc_layers: int = bounded(3, 1)
    disc_channels: int = bounded(64, 1)
    kl_weight: float = bounded(0.004, 0)
    # LPIPS-VGG backbone: a torchvision VGG16 weights file; empty = torch's hub cache
    perceptual_weights: str = ""
    perceptual_random: bool = False  # random VGG, for tests only: never for real training
    # kappa of the untrained posterior; 0 keeps the default init (kappa ~ 1.7, nearly uniform).
    # Short runs set it higher: kappa grows by small steps, and diffuse posteriors blur
    # reconstructions and make noisy targets for the AR model.
    initial_kappa: float = bounded(0.0, 0)
    # the untrained code: "random" (default init) or "pca", a linear code of each token's
    # patch fitted to training images (SphericalVAE.init_patch_code; needs vae.patch_shortcut):
    # a short run then starts near the best linear code instead of learning one from scratch
    initial_code: Literal["random", "pca"] = "random"


@dataclass
class AugmentConfig:
    """Random crops covering ``random_crop_min``..1 of the short side plus flips; the share of
    random-crop samples falls linearly from 1 to 0 between the two epochs, centre crops after."""

    random_crop_min: float = bounded(0.8, 0.01, 1)
    hflip: bool = True
    crop_decay_start_epoch: int = bounded(350, 0)
    crop_decay_end_epoch: int = bounded(375, 0)


@dataclass
class DataConfig:
    """Where a recipe's data comes from and where its prepared forms live."""

    source: str = "hf:ILSVRC/imagenet-1k"
    prepared: str = "data/imagenet"
    latents: str = "data/imagenet_latents"
    # synthetic source only: how many images to generate (default 10000); a folder, tar or
    # hub source always prepares every image of its split
    num_images: int | None = bounded(None, 1)


@dataclass
class CacheConfig:
    """What ``cache-latents`` stores per image: the posterior of the centre crop and of its
    flip, plus ``random_crops`` random crops (each flipped at random) for the paper's crop
    augmentation, in shards of ``shard_size`` images."""

    random_crops: int = bounded(0, 0)
    shard_size: int = bounded(1024, 1)
    batch_size: int = bounded(64, 1)
    seed: int = bounded(0, 0)


@dataclass
class SampleConfig:
    """How each token is drawn: the guidance scale ``cfg`` (1 = off) and its schedule over
    the tokens; the head's sampler (``sde``: the paper's Euler-Maruyama, ``ode``: Euler,
    ``heun``: second order) and its ``steps``, or with ``steps_last`` > 0 step annealing:
    ``steps`` for the first token falling linearly to ``steps_last`` for the last.
    ``temperature`` scales the head's noise: its starting noise and, for ``sde``, the noise of
    every step (1 = the paper; below 1 each token keeps nearer its likeliest values, as in
    MAR). ``compile`` runs the head's step through ``torch.compile`` (CUDA graphs on a GPU).
    ``precision`` bf16 holds the AR weights in bf16, as the authors sample in bf16
    (``spherear.precision``); fp32 computes in fp32."""

    cfg: float = bounded(4.5, 0)
    cfg_schedule: Literal["linear", "constant"] = "linear"
    steps: int = bounded(100, 1)
    sampler: Literal["sde", "ode", "heun"] = "sde"
    steps_last: int = bounded(0, 0)
    temperature: float = bounded(1.0, 0)
    compile: bool = False
    precision: Literal["fp32", "bf16"] = "fp32"


@dataclass
class EvalConfig:
    """What ``eval-fid`` compares samples with when no ``--ref`` is given: an ADM reference
    batch (``VIRTUAL_imagenet256_labeled.npz``), a samples-style ``.npz`` or a prepared
    dataset; and the Inception weights file (empty = the standard cache location)."""

    reference: str = ""
    inception_weights: str = ""


@dataclass
class HubConfig:
    """Where ``push-to-hub`` publishes a run when no ``--repo-id`` is given."""

    repo_id: str = ""
    license: str = "mit"


@dataclass
class Recipe:
    run: RunConfig = field(default_factory=RunConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    ar: ARConfig | None = None
    train: TrainConfig = field(default_factory=TrainConfig)
    vae_loss: VAELossConfig | None = None
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    hub: HubConfig = field(default_factory=HubConfig)


# ---------------------------------------------------------------------------------------
# Validation


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " or ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp) if a is not type(None))
    if origin is tuple:
        args = typing.get_args(tp)
        inner = {bool: "booleans", int: "integers", float: "numbers", str: "strings"}[args[0]]
        return f"a list of {inner}" if args[-1] is Ellipsis else f"a list of {len(args)} {inner}"
    if dataclasses.is_dataclass(tp):
        return "a table"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        tp, str(tp)
    )


def _coerce(value: Any, tp: Any, key: str, where: str) -> Any:
    """Return ``value`` as type ``tp`` or raise a RecipeError naming ``key``."""
    origin = typing.get_origin(tp)
    wrong = RecipeError(f"{where}: '{key}' must be {_type_name(tp)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise wrong
        return _build(tp, value, key, where)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, options[0], key, where)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise wrong
        return value
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise wrong
        inner = [args[0]] * len(value) if args[-1] is Ellipsis else list(args)
        if len(value) != len(inner):
            raise wrong
        try:
            return tuple(_coerce(v, a, key, where) for v, a in zip(value, inner, strict=True))
        except RecipeError:
            raise wrong from None
    if tp is bool:
        if not isinstance(value, bool):
            raise wrong
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise wrong
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise wrong
        return value
    raise TypeError(f"unsupported recipe field type {tp!r}")


def _unknown_key(cls: type, name: str, prefix: str, where: str) -> RecipeError:
    valid = [f.name for f in dataclasses.fields(cls)]
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
    hint = f"did you mean '{prefix}{close[0]}'?" if close else f"valid keys: {', '.join(valid)}"
    return RecipeError(f"{where}: unknown key '{prefix}{name}'; {hint}")


def _build(cls: type, data: dict, prefix: str, where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    pre = f"{prefix}." if prefix else ""
    for name in data:
        if name not in names:
            raise _unknown_key(cls, name, pre, where)
    kwargs = {name: _coerce(v, hints[name], pre + name, where) for name, v in data.items()}
    for f in dataclasses.fields(cls):
        if "range" in f.metadata and f.name in kwargs:
            _check_range(kwargs[f.name], *f.metadata["range"], pre + f.name, where)
    return cls(**kwargs)


def _check_range(value: Any, low: float | None, high: float | None, key: str, where: str):
    for v in value if isinstance(value, tuple) else (value,):
        if v is None or ((low is None or v >= low) and (high is None or v <= high)):
            continue
        wanted = f">= {low}" if high is None else f"between {low} and {high}"
        raise RecipeError(f"{where}: '{key}' must be {wanted}, got {value!r}")


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise RecipeError(f"--set {text}: expected section.key=value, e.g. train.lr=1e-4")
    dotted, raw = text.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare word is a string: --set run.name=my_run
    return dotted.strip().split("."), value


def _apply_override(data: dict, path: list[str], value: Any, text: str, where: str) -> None:
    cls: type = Recipe
    node = data
    for depth, name in enumerate(path):
        hints = typing.get_type_hints(cls)
        prefix = ".".join(path[:depth])
        if name not in hints:
            raise _unknown_key(cls, name, f"{prefix}." if prefix else "", f"{where} (--set {text})")
        if depth == len(path) - 1:
            node[name] = value
            return
        tp = hints[name]
        if typing.get_origin(tp) in (typing.Union, types.UnionType):
            tp = next(a for a in typing.get_args(tp) if a is not type(None))
        if not dataclasses.is_dataclass(tp):
            raise RecipeError(f"{where} (--set {text}): '{'.'.join(path[: depth + 1])}' is a value")
        node = node.setdefault(name, {})
        cls = tp


def recipe_from_dict(data: dict, where: str = "<recipe>", overrides: list[str] = ()) -> Recipe:
    data = copy.deepcopy(data)  # overrides must not touch the caller's dict
    for text in overrides:
        path, value = _parse_override(text)
        _apply_override(data, path, value, text, where)
    recipe = _build(Recipe, data, "", where)
    recipe.vae.check(where)
    return recipe


def load_recipe(path: str | Path, overrides: list[str] = ()) -> Recipe:
    """Read a TOML recipe, apply ``--set`` overrides and validate the result."""
    path = Path(path)
    if path.is_dir():
        raise RecipeError(f"{path}: a folder, not a recipe file; pass a .toml file (see recipes/)")
    if not path.is_file():
        raise RecipeError(f"{path}: no such recipe file; the shipped ones are in recipes/")
    try:
        data = tomllib.loads(read_text(path, "save the recipe as UTF-8"))
    except tomllib.TOMLDecodeError as e:
        raise RecipeError(f"{path}: not valid TOML ({e})") from None
    return recipe_from_dict(data, str(path), overrides)


def recipe_to_dict(recipe: Recipe) -> dict:
    """Plain nested dict; sections and fields that are None are left out."""

    def clean(obj: Any) -> Any:
        if dataclasses.is_dataclass(obj):
            return {
                f.name: clean(getattr(obj, f.name))
                for f in dataclasses.fields(obj)
                if getattr(obj, f.name) is not None
            }
        if isinstance(obj, tuple):
            return list(obj)
        return obj

    return clean(recipe)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, str):
        return json.dumps(value)  # JSON string escapes are valid TOML basic strings
    return repr(value)


def recipe_to_toml(recipe: Recipe) -> str:
    lines = []
    for section, table in recipe_to_dict(recipe).items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {_toml_value(value)}" for key, value in table.items()]
        lines.append("")
    return "\n".join(lines)


def save_recipe(recipe: Recipe, out_dir: str | Path) -> Path:
    """Write the resolved recipe beside a run's outputs as ``recipe.toml``."""
    out = Path(out_dir) / "recipe.toml"
    atomic_write(out, recipe_to_toml(recipe), "recipe")
    return out
