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
