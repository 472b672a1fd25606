"""Embedded, procedurally generated class-conditional image sets.

``shapes`` (the default, ``--source synthetic``): ten classes told apart by shape and
structure (a disk, a ring, a square, a triangle, a cross, stripes in three orientations, a
checkerboard, a grid of dots). ``marks`` (``--source synthetic:marks``): eight other classes
(an ellipse, a five-armed star, a hexagon, a crescent, a bullseye, pinwheel sectors, wavy
stripes, grid lines), a second dataset on which a setting tuned on ``shapes`` can be
checked. Colours, position, size, rotation and texture noise are random and shared by all
classes, so colour alone says nothing about the class. Image ``i`` depends only on (seed,
i, resolution, family): any number of workers produce the same bytes.
"""

from __future__ import annotations

import numpy as np

CLASS_NAMES = (
    "disk", "ring", "square", "triangle", "cross",
    "horizontal_stripes", "vertical_stripes", "diagonal_stripes", "checkerboard", "dots",
)  # fmt: skip
MARKS = (
    "ellipse", "star", "hexagon", "crescent", "bullseye", "sectors", "wavy_stripes", "grid_lines",
)  # fmt: skip
FAMILIES = {"shapes": CLASS_NAMES, "marks": MARKS}


def _mask(label: int, u: np.ndarray, v: np.ndarray, size: float, freq: float) -> np.ndarray:
    """Signed coverage in [0, 1] of class ``label`` in rotated, centred coordinates u, v."""
    r = np.sqrt(u**2 + v**2)
    edge = 0.02  # soft edges: anti-aliasing without supersampling

    def inside(d: np.ndarray) -> np.ndarray:  # d < 0 inside
        return 1 / (1 + np.exp(np.clip(d / edge, -50, 50)))

    def waves(x: np.ndarray) -> np.ndarray:
        return inside(-np.sin(2 * np.pi * freq * x) * 0.05)

    if label == 0:
        return inside(r - size)
    if label == 1:
        return inside(np.abs(r - size * 0.8) - size * 0.18)
    if label == 2:
        return inside(np.maximum(np.abs(u), np.abs(v)) - size * 0.85)
    if label == 3:
        d = np.maximum(-v - size * 0.5, np.abs(u) * 1.73 + v - size)
        return inside(d)
    if label == 4:
        arm = np.minimum(
            np.maximum(np.abs(u) - size * 0.22, np.abs(v) - size),
            np.maximum(np.abs(v) - size * 0.22, np.abs(u) - size),
        )
        return inside(arm)
    if label == 5:
        return waves(v)
    if label == 6:
        return waves(u)
    if label == 7:
        return waves((u + v) / np.sqrt(2))
    if label == 8:
        return inside(-np.sin(2 * np.pi * freq * u) * np.sin(2 * np.pi * freq * v) * 0.05)
    if label == 9:
        cu = u * freq - np.round(u * freq)
        cv = v * freq - np.round(v * freq)
        return inside(np.sqrt(cu**2 + cv**2) / freq - 0.3 / freq)
    raise ValueError(f"synthetic label {label} is not in 0..{len(CLASS_NAMES) - 1}")


def _mark(label: int, u: np.ndarray, v: np.ndarray, size: float, freq: float) -> np.ndarray:
    """Coverage in [0, 1] of class ``label`` of the marks family, as ``_mask``."""
    r, theta = np.sqrt(u**2 + v**2), np.arctan2(v, u)
    edge = 0.02

    def inside(d: np.ndarray) -> np.ndarray:
        return 1 / (1 + np.exp(np.clip(d / edge, -50, 50)))

    def waves(x: np.ndarray) -> np.ndarray:
        return inside(-np.sin(2 * np.pi * freq * x) * 0.05)

    if label == 0:
        return inside((np.sqrt((u / size) ** 2 + (v / (0.45 * size)) ** 2) - 1) * 0.45 * size)
    if label == 1:
        return inside(r - size * (0.55 + 0.4 * np.cos(5 * theta)))
    if label == 2:
        sides = [u * np.cos(k * np.pi / 3) + v * np.sin(k * np.pi / 3) for k in range(6)]
        return inside(np.max(sides, axis=0) - size * 0.8)
    if label == 3:
        bite = np.sqrt((u - 0.45 * size) ** 2 + v**2)
        return inside(np.maximum(r - size, size * 0.8 - bite))
    if label == 4:
        return waves(r)
    if label == 5:
        return inside(-np.sin(3 * theta) * 0.05)
    if label == 6:
        return waves(v + 0.12 * np.sin(2 * np.pi * 1.5 * u))
    if label == 7:
        cu = np.abs(u * freq - np.round(u * freq))
        cv = np.abs(v * freq - np.round(v * freq))
        return inside(np.minimum(cu, cv) / freq - 0.12 / freq)
    raise ValueError(f"marks label {label} is not in 0..{len(MARKS) - 1}")


def render(
    seed: int, index: int, resolution: int, family: str = "shapes"
) -> tuple[np.ndarray, int]:
    """Image ``index`` of the set: (H x W x 3 uint8, label). Classes cycle, so any
    prefix of n * (number of classes) images holds n of each."""
    label = index % len(FAMILIES[family])
    rng = np.random.default_rng([seed, index])
    fg, bg = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
    if np.abs(fg - bg).sum() < 0.6:  # keep the shape visible
        fg = 1 - bg
    angle = rng.uniform(0, 2 * np.pi)
    if family == "shapes" and CLASS_NAMES[label].endswith(
        "stripes"
    ):  # their orientation is what tells them apart
        angle = angle / (2 * np.pi) * 0.3 - 0.15
    centre = rng.uniform(-0.15, 0.15, 2)
    size = rng.uniform(0.45, 0.7)
    freq = rng.uniform(2.5, 4.5)
    axis = (np.arange(resolution) + 0.5) / resolution * 2 - 1
    y, x = np.meshgrid(axis, axis, indexing="ij")
    x, y = x - centre[0], y - centre[1]
    c, s = np.cos(angle), np.sin(angle)
    u, v = c * x + s * y, -s * x + c * y
    m = (_mask if family == "shapes" else _mark)(label, u, v, size, freq)[..., None]
    image = m * fg + (1 - m) * bg
    image += rng.normal(0, 0.03, image.shape)  # texture, so no two pixels are equal
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8), label
