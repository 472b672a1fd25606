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
import math
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


# Upper bounds on the sizes a recipe (or an export's config.json, which may come from anyone)
# can ask for, checked before anything is built: each is many times what the paper's largest
# model uses (SphereAR-H: depth 40, width 1280; 256 px; 1000 classes; 100 steps), so no real
# model hits them, while a value past them would allocate for minutes and then fail.
MAX_DEPTH = 1024  # layers, heads, registers, class tokens
MAX_WIDTH = 65_536  # channels and widths
MAX_RESOLUTION = 8192  # pixels per side
MAX_CLASSES = 1_000_000  # ImageNet-21k has 21,841
MAX_STEPS = 100_000  # head sampler steps per token
# any other integer: far beyond any count of steps, images or epochs, and inside int64, so
# torch, numpy and the JSON logs never overflow on it
MAX_INTEGER = 2**53


def bounded(
    default: Any, low: float | None = None, high: float | None = None, most: int | None = None
) -> Any:
    """A field whose value (each value, for lists) must lie in [low, high], and (a size)
    be at most ``most``, the upper bound above which nothing is built."""
    return field(default=default, metadata={"range": (low, high), "most": most})


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
    one is the transformer width, and each step between two entries halves the resolution.

    The paper's comparisons are two more keys: ``posterior`` (``power_spherical``, the paper,
    or ``gaussian``: a diagonal Gaussian with KL to N(0, I), as MAR's KL-16 VAE) and
    ``backbone`` (``hybrid``: convs then ViT blocks, the paper; ``cnn``: convs only; ``vit``:
    a patch embedding and ViT blocks only), each pure backbone given as many blocks of its
    own kind as keep the parameter count near the hybrid's (``spherear.models.vae``)."""

    resolution: int = bounded(256, 1, most=MAX_RESOLUTION)
    latent_dim: int = bounded(16, 2, most=MAX_WIDTH)
    channels: tuple[int, ...] = bounded((64, 64, 128, 256, 512), 4, most=MAX_WIDTH)
    num_heads: int = bounded(8, 1, most=MAX_DEPTH)
    encoder_depth: int = bounded(6, 0, most=MAX_DEPTH)
    decoder_depth: int = bounded(12, 0, most=MAX_DEPTH)
    num_registers: int = bounded(4, 0, most=MAX_DEPTH)
    # A linear path from each pixel patch to its token and back (not in the paper's
    # tokenizer): the code starts near a PCA of the patches, so a few hundred steps reach
    # a usable PSNR; the CNN learns what the linear code misses.
    patch_shortcut: bool = False
    posterior: Literal["power_spherical", "gaussian"] = "power_spherical"
    backbone: Literal["hybrid", "cnn", "vit"] = "hybrid"

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
    depth: int | None = bounded(None, 1, most=MAX_DEPTH)
    num_heads: int | None = bounded(None, 1, most=MAX_DEPTH)
    width: int | None = bounded(None, 4, most=MAX_WIDTH)
    head_depth: int | None = bounded(None, 1, most=MAX_DEPTH)
    head_width: int | None = bounded(None, 1, most=MAX_WIDTH)
    head_groups: int | None = bounded(None, 1, most=MAX_DEPTH)
    # unset: the prepared data's class count (info.json); a value that disagrees is refused
    num_classes: int | None = bounded(None, 1, most=MAX_CLASSES)
    # the names of labels 0..num_classes-1; unset: the data's (train-ar records them)
    class_names: tuple[str, ...] = ()
    num_class_tokens: int = bounded(16, 1, most=MAX_DEPTH)
    class_dropout: float = bounded(0.1, 0, 1)
    diff_batch_mul: int = bounded(4, 1, most=MAX_DEPTH)
    # The tokens the model reads and writes, for Gaussian latents (an S-VAE's are on the
    # sphere already): "sphere" projects each latent onto the sphere of radius sqrt(dim)
    # (post-hoc normalisation), "raw" multiplies it by latent_scale (MAR's practice).
    token_space: Literal["sphere", "raw"] = "sphere"
    # Gaussian latents: 1 / their standard deviation; unset: measured on the training data
    # by train-ar and recorded in the export. Decoding divides the tokens by it again.
    latent_scale: float | None = bounded(None, 0)

    def check(self, where: str) -> None:
        if self.class_names and self.num_classes and len(self.class_names) != self.num_classes:
            raise RecipeError(
                f"{where}: ar.class_names has {len(self.class_names)} names for ar.num_classes "
                f"{self.num_classes}; give one name per class, or none"
            )


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
    # vae.posterior = "gaussian": the weight of the KL to N(0, I) (MAR's KL-16 VAE: 1e-6)
    gaussian_kl_weight: float = bounded(1e-6, 0)
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
    # vae.posterior = "gaussian": the standard deviation of the untrained posterior, the
    # counterpart of initial_kappa; 0 keeps the default init (about 1)
    initial_std: float = bounded(0.0, 0)


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
    ``normalise`` says where each token is put back on the sphere; ``precision`` bf16 holds
    the AR weights in bf16, as the authors sample in bf16 (``spherear.precision``); fp32
    computes in fp32."""

    cfg: float = bounded(4.5, 0)
    cfg_schedule: Literal["linear", "constant"] = "linear"
    steps: int = bounded(100, 1, most=MAX_STEPS)
    sampler: Literal["sde", "ode", "heun"] = "sde"
    steps_last: int = bounded(0, 0, most=MAX_STEPS)
    temperature: float = bounded(1.0, 0)
    compile: bool = False
    # radial normalisation of each drawn token onto the sphere of radius sqrt(dim):
    # "after_cfg" (the paper), "before_cfg" (the class and null-class tokens each drawn
    # unguided, normalised, then guided), "none"; "auto": the model's own, after_cfg for
    # tokens on the sphere and none for raw Gaussian latents
    normalise: Literal["auto", "after_cfg", "before_cfg", "none"] = "auto"
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
        if abs(value) > MAX_INTEGER:
            raise RecipeError(f"{where}: '{key}' is too large ({_short(value)}); at most 2**53")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise wrong
        if abs(value) > MAX_INTEGER or not math.isfinite(value):
            raise RecipeError(f"{where}: '{key}' must be a finite number, got {_short(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise wrong
        return value
    raise TypeError(f"unsupported recipe field type {tp!r}")


def _short(value: Any) -> str:
    if isinstance(value, int) and abs(value) > 10**20:
        return "an integer of more than 20 digits"
    return repr(value)


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
            _check_most(kwargs[f.name], f.metadata["most"], pre + f.name, where)
    return cls(**kwargs)


def _check_range(value: Any, low: float | None, high: float | None, key: str, where: str):
    for v in value if isinstance(value, tuple) else (value,):
        if v is None or ((low is None or v >= low) and (high is None or v <= high)):
            continue
        wanted = f">= {low}" if high is None else f"between {low} and {high}"
        raise RecipeError(f"{where}: '{key}' must be {wanted}, got {value!r}")


def _check_most(value: Any, most: int | None, key: str, where: str) -> None:
    for v in value if isinstance(value, tuple) else (value,):
        if most is not None and v is not None and v > most:
            raise RecipeError(
                f"{where}: '{key}' is {v}, above {most}, the most spherear builds (many times "
                "the paper's largest model); check the value"
            )


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise RecipeError(f"--set {text}: expected section.key=value, e.g. train.lr=1e-4")
    dotted, raw = text.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare word is a string: --set run.name=my_run
    except RecursionError:
        raise RecipeError(f"--set {dotted}: the value is nested too deeply") from None
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


def section_from_dict(cls: type, data: dict, where: str) -> Any:
    """One section (``SampleConfig``, say) from ``data``, checked as a recipe's is: unknown
    keys, types, ranges; for settings that come from elsewhere than a file (a web page)."""
    return _build(cls, data, "", where)


def recipe_from_dict(data: dict, where: str = "<recipe>", overrides: list[str] = ()) -> Recipe:
    try:
        data = copy.deepcopy(data)  # overrides must not touch the caller's dict
    except RecursionError:
        raise RecipeError(f"{where}: nested too deeply to be a recipe") from None
    for text in overrides:
        path, value = _parse_override(text)
        _apply_override(data, path, value, text, where)
    recipe = _build(Recipe, data, "", where)
    recipe.vae.check(where)
    if recipe.ar is not None:
        recipe.ar.check(where)
    check_variant(recipe, where)
    return recipe


def check_variant(recipe: Recipe, where: str) -> None:
    """The paper's comparisons combine keys of several sections; a combination that means
    nothing stops here, before any work."""
    gaussian = recipe.vae.posterior == "gaussian"
    ar, loss = recipe.ar, recipe.vae_loss
    if not gaussian and ar is not None:
        if ar.token_space == "raw":
            raise RecipeError(
                f'{where}: ar.token_space = "raw" is for Gaussian latents (vae.posterior = '
                '"gaussian"); a power-spherical VAE\'s tokens are on the sphere: remove it'
            )
        if ar.latent_scale is not None:
            raise RecipeError(
                f"{where}: ar.latent_scale scales Gaussian latents (vae.posterior = "
                '"gaussian"); a power-spherical VAE\'s are on the sphere: remove it'
            )
    if loss is not None and gaussian and loss.initial_kappa:
        raise RecipeError(
            f"{where}: vae_loss.initial_kappa is the power-spherical posterior's; with "
            'vae.posterior = "gaussian" set vae_loss.initial_std instead'
        )
    if loss is not None and not gaussian and loss.initial_std:
        raise RecipeError(
            f"{where}: vae_loss.initial_std is the Gaussian posterior's; with vae.posterior = "
            '"power_spherical" set vae_loss.initial_kappa instead'
        )


def load_recipe(path: str | Path, overrides: list[str] = ()) -> Recipe:
    """Read a TOML recipe, apply ``--set`` overrides and validate the result."""
    path = Path(path)
    if path.is_dir():
        raise RecipeError(f"{path}: a folder, not a recipe file; pass a .toml file (see recipes/)")
    if not path.is_file():
        raise RecipeError(f"{path}: no such recipe file; the shipped ones are in recipes/")
    # editors on Windows may start UTF-8 with a byte-order mark, which TOML does not allow
    text = read_text(path, "save the recipe as UTF-8").removeprefix("\ufeff")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise RecipeError(f"{path}: not valid TOML ({e})") from None
    except RecursionError:
        raise RecipeError(f"{path}: nested too deeply to be a recipe") from None
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
