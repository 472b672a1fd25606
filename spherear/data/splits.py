"""Held-out and evaluation subsets of a prepared dataset: seeded choices stratified by class.

A prepared dataset keeps the order its source read it in: class by class for a folder or
the ImageNet tar, the hub's own order otherwise. "The last N images" would then be one
class, so every subset the toolkit draws (train-vae's held-out images and reconstruction
grid, the probe's training and held-out images) comes from here instead: each class gives
its share, whatever the storage order. The data itself stays in source order, so a
prepared folder is still written one source shard at a time, resumably.
"""

from __future__ import annotations

import numpy as np


def stratified_choice(labels: np.ndarray, count: int, seed: int) -> np.ndarray:
    """``count`` indices into ``labels``: each class gives ``count`` x its share of the
    images (rounded by largest remainder), picked at random within the class with ``seed``.
    They come round-robin over the classes, in a seeded class order, so that any prefix
    (the first row of a grid) covers as many classes as it can."""
    labels = np.asarray(labels)
    n = len(labels)
    if not 0 <= count <= n:
        raise ValueError(f"cannot choose {count} of {n} images")
    rng = np.random.default_rng(seed)
    classes, inverse, sizes = np.unique(labels, return_inverse=True, return_counts=True)
    # integer shares: floor(size x count / n), and one more for the largest remainders
    take, remainder = np.divmod(sizes * count, n)
    extra = count - int(take.sum())
    ties = rng.permutation(len(classes))  # equal remainders: a seeded choice, not the first
    take[np.lexsort((ties, -remainder))[:extra]] += 1
    members = np.split(np.argsort(inverse, kind="stable"), np.cumsum(sizes)[:-1])
    position = np.empty(len(classes), dtype=np.int64)
    position[rng.permutation(len(classes))] = np.arange(len(classes))
    chosen = [rng.permutation(m)[:k] for m, k in zip(members, take, strict=True)]
    index = np.concatenate(chosen)
    rank = np.concatenate([np.arange(len(c)) for c in chosen])
    slot = np.repeat(position, take)
    return index[np.lexsort((slot, rank))]


def held_out_split(labels: np.ndarray, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training indices in storage order, ``count`` held-out indices from
    ``stratified_choice``)."""
    held = stratified_choice(labels, count, seed)
    train = np.setdiff1d(np.arange(len(labels)), held, assume_unique=True)
    return train, held


def class_counts(labels: np.ndarray, names: list[str]) -> dict[str, int]:
    """How many of ``labels`` each class of ``names`` has (zeros included)."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(names))
    return {name: int(c) for name, c in zip(names, counts, strict=False)}
