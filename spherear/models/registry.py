"""Model sizes. Recipes name a row (``ar.size``); the paper's B/L/H match the released models."""

from __future__ import annotations

import dataclasses
import difflib

from spherear.config import ARConfig, Recipe, RecipeError, check_head_dim

# depth, heads and width of the causal trunk; res-blocks, width and adaLN groups of the head.
# tiny is sized for a CPU: its trunk of width 96 learns more per second there than 128.
AR_SIZES: dict[str, dict[str, int]] = {
    "tiny": dict(depth=4, num_heads=4, width=96, head_depth=3, head_width=128, head_groups=1),
    "B": dict(depth=24, num_heads=12, width=768, head_depth=6, head_width=768, head_groups=2),
    "L": dict(depth=32, num_heads=16, width=1024, head_depth=8, head_width=1024, head_groups=2),
    "H": dict(depth=40, num_heads=20, width=1280, head_depth=12, head_width=1280, head_groups=3),
}


def resolve_ar(cfg: ARConfig, where: str = "recipe") -> ARConfig:
    """Fill the architecture fields left unset from the size registry."""
    if cfg.size not in AR_SIZES:
        by_lower = {name.lower(): name for name in AR_SIZES}
        close = difflib.get_close_matches(cfg.size.lower(), by_lower, n=1, cutoff=0.3)
        hint = f"did you mean '{by_lower[close[0]]}'? " if close else ""
        raise RecipeError(
            f"{where}: unknown ar.size '{cfg.size}'; {hint}sizes: {', '.join(AR_SIZES)}"
        )
    row = AR_SIZES[cfg.size]
    filled = dataclasses.replace(cfg, **{k: v for k, v in row.items() if getattr(cfg, k) is None})
    check_head_dim(where, ("ar.width", filled.width), ("ar.num_heads", filled.num_heads))
    if filled.head_depth % filled.head_groups:
        raise RecipeError(
            f"{where}: ar.head_depth {filled.head_depth} must be a multiple of "
            f"ar.head_groups {filled.head_groups}"
        )
    return filled


def spell_out(recipe: Recipe) -> Recipe:
    """``recipe`` with its AR architecture written out in full, as saved beside weights: a
    later change to the registry then cannot change what they are."""
    return recipe if recipe.ar is None else dataclasses.replace(recipe, ar=resolve_ar(recipe.ar))
