"""Compressed inputs are sized from their headers before anything is inflated: a small file
that inflates to gigabytes costs megabytes. Each bomb is written here, in a stream, and each
command runs in a process of its own whose peak memory is measured."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

CHUNK = bytes(16 << 20)
MIB = 1 << 20


def _zip_member(archive: zipfile.ZipFile, name: str, head: bytes, zeros: int) -> None:
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_DEFLATED
    with archive.open(info, "w", force_zip64=True) as f:
        f.write(head)
        for start in range(0, zeros, len(CHUNK)):
            f.write(CHUNK[: min(len(CHUNK), zeros - start)])


def npz_bomb(path: Path, shape: tuple[int, ...], claimed: tuple[int, ...] | None = None) -> Path:
    """An ``np.savez_compressed``-style file of zeros of ``shape`` whose header says
    ``claimed`` (default: the truth)."""
    import io

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "|u1", "fortran_order": False, "shape": claimed or shape}
    )
    with zipfile.ZipFile(path, "w", compresslevel=1) as archive:
        _zip_member(archive, "arr_0.npy", header.getvalue(), int(np.prod(shape)))
    return path


# runs a command, then writes its own peak resident memory (KiB) to the file in argv[1]:
# VmHWM, whose count starts again at exec (ru_maxrss would include the forking parent's)
MEASURED = """
import runpy, sys
out, sys.argv = sys.argv[1], sys.argv[2:]
try:
    runpy.run_module(sys.argv[0], run_name="__main__") if sys.argv[0] != "-c" else exec(sys.argv[1])
    code = 0
except SystemExit as e:
    code = e.code
finally:
    status = open("/proc/self/status").read().split("VmHWM:")[1]
    open(out, "w").write(status.split()[0])
sys.exit(code)
"""


def _peak(*command: str, cwd: Path) -> tuple[subprocess.CompletedProcess, float]:
    """The finished command (``-m MODULE ARGS`` or ``-c CODE``) and its own peak resident
    memory in MiB."""
    record = cwd / "peak.txt"
    args = list(command[1:]) if command[0] == "-m" else list(command)
    done = subprocess.run([sys.executable, "-c", MEASURED, str(record), *args],
                          capture_output=True, text=True, cwd=cwd, timeout=60)  # fmt: skip
    return done, int(record.read_text()) / 1024


def _baseline(cwd: Path) -> float:
    """What a process that imports the commands' modules holds before it reads anything."""
    code = "import torch, spherear.cli, spherear.eval.probe, spherear.checkpoints"
    return _peak("-c", code, cwd=cwd)[1]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    w = tmp_path_factory.mktemp("bombs")
    (w / "d").mkdir()
    (w / "d" / "info.json").write_text(json.dumps({"settings": {}}))
    return w


def _refused(done: subprocess.CompletedProcess, words: str) -> None:
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], done.stderr


def test_a_samples_bomb_is_refused_from_its_header(workspace):
    # 5,000 images of 256 px: 983 MB of zeros in a file of about 5 MB
    bomb = npz_bomb(workspace / "S.npz", (5000, 256, 256, 3))
    np.save(workspace / "labels.npy", np.zeros(5000, np.int64))
    size = bomb.stat().st_size / MIB
    base = _baseline(workspace)
    done, peak = _peak("-m", "spherear", "eval-probe", "S.npz", "--data", "d", cwd=workspace)
    _refused(done, "256px images: the probe is for 64px or less")
    print(f"eval-probe on a {size:.1f} MiB file inflating to 983 MB: peak {peak:.0f} MiB, "
          f"imports alone {base:.0f} MiB")  # fmt: skip
    assert peak <= base + 2 * size + 32


def test_a_header_that_lies_about_the_size_is_refused(workspace):
    npz_bomb(workspace / "L.npz", (4000, 32, 32, 3), claimed=(4, 32, 32, 3))
    done, _ = _peak("-m", "spherear", "eval-fid", "L.npz", "--ref", "L.npz", cwd=workspace)
    _refused(done, "arr_0.npy inflates to 12288128 bytes but its header")


def test_compressed_samples_are_read_as_a_stream(workspace):
    """eval-fid reads by ranges: a range near the end inflates the rest as a stream, in
    memory bounded by the range, and gives the bytes np.load gives."""
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (300, 8, 8, 3), dtype=np.uint8)
    np.savez_compressed(workspace / "small.npz", small)
    from spherear.eval.npz import NpzImages

    images = NpzImages(workspace / "small.npz")
    for start, stop in [(0, 7), (7, 100), (250, 300), (3, 9)]:  # forward, then back again
        assert np.array_equal(images.read(start, stop), small[start:stop])
    images.close()

    bomb = npz_bomb(workspace / "big.npz", (5000, 256, 256, 3))
    code = (
        "from spherear.eval.npz import NpzImages;"
        "x = NpzImages('big.npz'); a = x.read(4990, 5000); assert a.shape == (10, 256, 256, 3);"
    )
    done, peak = _peak("-c", code, cwd=workspace)
    assert done.returncode == 0, done.stderr
    size = bomb.stat().st_size / MIB
    base = _peak("-c", "import spherear.eval.npz", cwd=workspace)[1]
    print(
        f"reading the last 10 of 5,000 compressed 256 px images ({size:.1f} MiB file, "
        f"983 MB inflated): peak {peak:.0f} MiB, imports alone {base:.0f} MiB"
    )
    assert peak <= base + 2 * size + 32  # 4 MiB skip slices, the range, the inflater


def test_a_torch_zip_bomb_is_refused_before_inflating(workspace):
    bomb = workspace / "bomb.pt"
    with zipfile.ZipFile(bomb, "w", compresslevel=1) as archive:
        _zip_member(archive, "archive/data.pkl", b"", 1 << 30)
    size = bomb.stat().st_size / MIB
    base = _baseline(workspace)
    for command in (["info", "--checkpoint", "bomb.pt"], ["sample", "--n", "4", "-c", "bomb.pt"]):
        done, peak = _peak("-m", "spherear", *command, cwd=workspace)
        _refused(done, "zip members inflate to 1073741824 bytes")
        print(f"{command[0]} on a {size:.1f} MiB torch zip inflating to 1 GiB: peak "
              f"{peak:.0f} MiB, imports alone {base:.0f} MiB")  # fmt: skip
        assert peak <= base + 2 * size + 32
