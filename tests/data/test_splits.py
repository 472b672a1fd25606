"""Held-out and evaluation subsets: every class in proportion, whatever the storage order."""

import numpy as np
import pytest

from spherear.data.splits import class_counts, held_out_split, stratified_choice
from spherear.eval.features import reference_subset
from spherear.eval.probe import ProbeSettings, split
from spherear.train.held_out import GRID, held_out_count

# stored class by class, as a folder: or tar: source stores them
CLASS_ORDERED = np.repeat(np.arange(5), [50, 30, 10, 7, 3])


def test_each_class_gives_its_share_by_largest_remainder():
    # 20 of 100: shares 10, 6, 2, 1.4 and 0.6; the 19 whole ones, then the largest
    # remainder (0.6, the last class) takes the 20th
    picked = stratified_choice(CLASS_ORDERED, 20, seed=0)
    assert np.bincount(CLASS_ORDERED[picked], minlength=5).tolist() == [10, 6, 2, 1, 1]
    assert len(set(picked.tolist())) == 20
    # the last 20 images, the old held-out set, were three classes of the five
    assert set(CLASS_ORDERED[-20:].tolist()) == {2, 3, 4}


def test_the_choice_is_seeded_and_any_prefix_covers_the_classes():
    a, b = stratified_choice(CLASS_ORDERED, 20, 0), stratified_choice(CLASS_ORDERED, 20, 0)
    assert a.tolist() == b.tolist()
    assert sorted(stratified_choice(CLASS_ORDERED, 20, 1).tolist()) != sorted(a.tolist())
    assert sorted(CLASS_ORDERED[a[:5]].tolist()) == [0, 1, 2, 3, 4]  # round-robin
    # the same images whatever order they are stored in: only the labels matter
    order = np.random.default_rng(0).permutation(len(CLASS_ORDERED))
    shuffled = stratified_choice(CLASS_ORDERED[order], 20, 0)
    assert np.bincount(CLASS_ORDERED[order][shuffled], minlength=5).tolist() == [10, 6, 2, 1, 1]


def test_held_out_split_partitions_the_data():
    train, held = held_out_split(CLASS_ORDERED, 20, seed=3)
    assert len(train) == 80 and np.all(np.diff(train) > 0)
    assert sorted([*train.tolist(), *held.tolist()]) == list(range(100))
    with pytest.raises(ValueError):
        stratified_choice(CLASS_ORDERED, 101, 0)


def test_train_vae_held_out_and_grid_cover_every_class_of_class_ordered_data():
    labels = np.repeat(np.arange(8), 60)  # 480 images; a tenth, 48, held out: 6 a class
    train, held = held_out_split(labels, held_out_count(len(labels)), seed=0)
    assert np.bincount(labels[held]).tolist() == [6] * 8
    assert np.bincount(labels[train]).tolist() == [54] * 8
    assert sorted(labels[held[:GRID]].tolist()) == list(range(8))  # the grid: 8 classes


def test_probe_split_covers_every_class_of_class_ordered_data():
    labels = np.repeat(np.arange(8), 100)
    train, held = split(labels, ProbeSettings())  # a fifth (160) held out: 20 a class
    assert np.bincount(labels[held]).tolist() == [20] * 8
    assert np.bincount(labels[train]).tolist() == [80] * 8
    train, held = split(labels, ProbeSettings(max_train=200))  # 25 of the 80 left a class
    assert np.bincount(labels[train]).tolist() == [25] * 8 and not set(train) & set(held)


def test_class_counts_name_every_class():
    names = ["a", "b", "c"]
    assert class_counts(np.array([0, 0, 2]), names) == {"a": 2, "b": 0, "c": 1}


class _Labelled:
    """A prepared dataset as eval-fid sees it, stored class by class."""

    def __init__(self, labels: np.ndarray):
        self._labels = labels

    def __len__(self) -> int:
        return len(self._labels)

    def labels(self) -> np.ndarray:
        return self._labels


def test_eval_fid_precision_recall_reference_keeps_every_class():
    labels = np.repeat(np.arange(4), [30, 10, 10, 10])
    kept = reference_subset(_Labelled(labels), 40)  # the first 40 would be classes 0 and 1
    counts = np.bincount(labels[kept], minlength=4)  # 20, then 6.67 each: two get a 7th
    assert counts[0] == 20 and sorted(counts[1:].tolist()) == [6, 7, 7]
    assert np.all(np.diff(kept) > 0)
    assert reference_subset(_Labelled(labels), 100).tolist() == list(range(60))
