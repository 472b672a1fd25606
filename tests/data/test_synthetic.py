"""The embedded synthetic set: the same bytes on every run and process count, balanced."""

import numpy as np

from spherear.data.prepare import prepare_dataset, shard_files

from .conftest import dataset_rows


def test_synthetic_is_deterministic_and_balanced(tmp_path):
    for name in ("x", "y"):
        prepare_dataset("synthetic", tmp_path / name, resolution=16, num_images=1200,
                        num_proc=2, progress=False)  # fmt: skip
    files_x, files_y = shard_files(tmp_path / "x"), shard_files(tmp_path / "y")
    assert [f.read_bytes() for f in files_x] == [f.read_bytes() for f in files_y]
    labels = [r[1] for r in dataset_rows(tmp_path / "x")]
    assert np.bincount(labels).tolist() == [120] * 10
    val = prepare_dataset("synthetic", tmp_path / "v", resolution=16, num_images=10,
                          split="validation", progress=False)  # fmt: skip
    assert dataset_rows(val.out)[0][4] != dataset_rows(tmp_path / "x")[0][4]


def test_the_marks_family_is_a_second_balanced_set_with_other_classes(tmp_path):
    from spherear.data.prepare import read_info
    from spherear.data.synthetic import CLASS_NAMES, MARKS, render

    out = prepare_dataset("synthetic:marks", tmp_path / "m", resolution=16, num_images=80,
                          progress=False)  # fmt: skip
    info = read_info(out.out)
    assert info["class_names"] == list(MARKS) and not set(MARKS) & set(CLASS_NAMES)
    labels = [r[1] for r in dataset_rows(out.out)]
    assert np.bincount(labels).tolist() == [10] * 8
    # the same index is another image in each family, and each family is deterministic
    assert not np.array_equal(render(0, 3, 16)[0], render(0, 3, 16, "marks")[0])
    assert np.array_equal(render(0, 3, 16, "marks")[0], render(0, 3, 16, "marks")[0])


def test_an_unknown_family_is_refused_in_one_line(tmp_path):
    import pytest

    from spherear.data.sources import SourceError

    with pytest.raises(SourceError, match=r"synthetic\[:shapes\|marks\]"):
        prepare_dataset("synthetic:letters", tmp_path / "l", resolution=16, num_images=8,
                        progress=False)  # fmt: skip
