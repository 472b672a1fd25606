"""The I/O layer on its own: whole-or-nothing writes, swept temporaries, records, the
append-only log, one-line OS errors, and the crash hook."""

import errno
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save

from spherear.files import (
    DamagedError,
    JsonLines,
    OutputError,
    atomic_write,
    check_output,
    check_record,
    check_safetensors,
    explain,
    file_record,
    load_torch_file,
    new_folder,
    publish,
    read_json,
    sweep,
    write_json,
)


def test_an_atomic_write_leaves_the_file_or_nothing(tmp_path):
    path = tmp_path / "a" / "b.json"
    record = write_json(path, {"x": 1}, "test", record=True)
    assert json.loads(path.read_text()) == {"x": 1} and os.listdir(path.parent) == ["b.json"]
    assert record == {"bytes": path.stat().st_size, "sha256": file_record(path)["sha256"]}

    def fail(tmp):
        tmp.write_bytes(b"half")
        raise RuntimeError("the writer broke")

    with pytest.raises(RuntimeError, match="the writer broke"):
        atomic_write(path, fail, "test")
    assert json.loads(path.read_text()) == {"x": 1} and os.listdir(path.parent) == ["b.json"]


def test_a_full_disk_is_one_line_naming_the_file(tmp_path):
    def full(tmp):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OutputError) as e:
        atomic_write(tmp_path / "x.bin", full, "test")
    assert str(e.value) == (
        f"{tmp_path / 'x.bin'}: no space left on the device; free some space or write "
        "elsewhere, then rerun the same command (finished parts are kept)"
    )
    # libraries that wrap the OS error in text (safetensors, torch) are read too
    with pytest.raises(OutputError, match="no space left"):
        atomic_write(tmp_path / "y.bin", lambda tmp: exec("raise RuntimeError("
                     "'IoError(Os { code: 28, kind: StorageFull })')"), "test")  # fmt: skip
    assert explain(OSError(errno.EROFS, "x", "/data")) == (
        "/data: read-only file system; choose an output on a writable disk"
    )
    assert not list(tmp_path.iterdir())


def test_sweep_removes_the_temporaries_of_dead_processes_only(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()  # fmt: skip
    (tmp_path / "sub").mkdir()
    stale = [tmp_path / f".shard.{dead}.tmp", tmp_path / "sub" / f".x.json.{dead}.tmp"]
    for path in stale:
        path.write_text("half")
    (tmp_path / f".export.{dead}.tmp").mkdir()
    live = tmp_path / f".y.json.{os.getppid()}.tmp"  # the test runner's parent is alive
    live.write_text("busy")
    keep = tmp_path / "shard.tmp"  # not ours: no pid in the name
    keep.write_text("user file")
    gone = sweep(tmp_path)
    assert sorted(gone) == sorted([*stale, tmp_path / f".export.{dead}.tmp"])
    assert live.exists() and keep.exists()


def test_a_published_folder_replaces_the_old_one_whole(tmp_path):
    final = tmp_path / "export"
    final.mkdir()
    (final / "old.txt").write_text("old")
    tmp = new_folder(final)
    atomic_write(tmp / "new.txt", "new", "test")
    publish(tmp, final, "test")
    assert os.listdir(final) == ["new.txt"] and os.listdir(tmp_path) == ["export"]


def test_records_catch_truncation_and_changed_bytes(tmp_path):
    path = tmp_path / "w.safetensors"
    atomic_write(path, save({"w": torch.arange(10.0)}), "test")
    record = file_record(path)
    assert check_record(path, record) is None and check_safetensors(path) is None
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    assert "sha256 differs" in check_record(path, record)
    path.write_bytes(bytes(data[:-8]))
    assert check_record(path, record, content=False).startswith(
        f"w.safetensors has {len(data) - 8} bytes, {len(data)} were written"
    )
    assert check_safetensors(path).endswith(f"its header needs {len(data)}")
    assert check_record(tmp_path / "gone", record) == "gone is missing"


def test_check_output_names_the_problem_before_any_work(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="--out .*file: is a file, not the folder it needs"):
        check_output(tmp_path / "file", "--out")
    with pytest.raises(OutputError, match="is a folder, not the file it needs"):
        check_output(tmp_path, "--json", folder=False)
    with pytest.raises(OutputError, match="file is a file, so nothing can be created under it"):
        check_output(tmp_path / "file" / "a" / "b", "--out")
    check_output(tmp_path / "new" / "deeper", "--out")  # made later, by the stage itself
    check_output(tmp_path / "file", "--json", folder=False)  # replaced when written


def test_the_log_drops_a_torn_last_line_and_never_glues_to_it(tmp_path):
    log = JsonLines(tmp_path / "metrics.jsonl")
    for step in (1, 2, 3):
        log.append({"step": step})
    with open(log.path, "ab") as f:
        f.write(b'{"step": 4, "lo')  # a kill during an append
    assert [r["step"] for r in JsonLines(log.path).read()] == [1, 2, 3]
    again = JsonLines(log.path)
    again.append({"step": 4})
    assert log.path.read_text().splitlines()[-1] == '{"step": 4}'
    again.keep(2)  # back to what a checkpoint covered, in one truncation
    assert [r["step"] for r in again.read()] == [1, 2]
    log.path.write_text('{"step": 1}\nnot json\n{"step": 3}\n')
    with pytest.raises(DamagedError, match="line 2 is not JSON"):
        JsonLines(log.path).read()


def test_reading_damaged_json_or_text_is_one_line(tmp_path):
    (tmp_path / "empty.json").write_text("")
    (tmp_path / "latin.json").write_bytes(b'{"a": "\xe9"}')
    with pytest.raises(DamagedError, match="empty.json: damaged, empty; rerun it"):
        read_json(tmp_path / "empty.json", "rerun it")
    with pytest.raises(DamagedError, match=r"not UTF-8 text \(byte 0xe9 at position 7\)"):
        read_json(tmp_path / "latin.json", "rerun it")
    with pytest.raises(DamagedError, match="no such file or folder; rerun it"):
        read_json(tmp_path / "absent.json", "rerun it")


def test_a_torch_file_that_asks_for_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"x": os.system}, path)  # a reference to a function: loading it would import
    with pytest.raises(DamagedError) as e:
        load_torch_file(path)
    assert "refused to unpickle it: it asks for posix.system" in str(e.value)
    assert "weights_only" not in str(e.value)  # torch's advice to unpickle fully is not passed on
    torch.save({"w": torch.ones(2)}, path)
    assert torch.equal(load_torch_file(path)["w"], torch.ones(2))


@pytest.mark.parametrize(("target", "dies"), [("p", 1), ("p#2", 2), ("q", None)])
def test_the_crash_hook_kills_at_the_named_point(tmp_path, target, dies):
    script = (
        "import sys; from spherear.files import atomic_write\n"
        "for i in (1, 2, 3):\n"
        f"    atomic_write(r'{tmp_path}/out', str(i), 'p'); print(i, flush=True)\n"
    )
    log = tmp_path / "points"
    env = {**os.environ, "SPHEREAR_CRASH_AT": target, "SPHEREAR_CRASH_LOG": str(log)}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True)  # fmt: skip
    if dies is None:
        assert done.returncode == 0 and log.read_text().split() == ["p#1", "p#2", "p#3"]
        return
    assert done.returncode == -9 and done.stdout.split() == [str(i) for i in range(1, dies)]
    written = (tmp_path / "out").read_text() if dies > 1 else None
    assert written == (str(dies - 1) if dies > 1 else None)
    assert len(list(tmp_path.glob(".out.*.tmp"))) == 1  # the temporary a kill leaves


def test_differences_list_values_name_tables_and_skip_what_is_ignored():
    from spherear.files import differences

    saved = {"cfg": 2.0, "numerics": {"threads": 1}, "vae_sha256": "a" * 64, "checkpoint": "x"}
    now = {"cfg": 3.0, "numerics": {"threads": 2}, "vae_sha256": "b" * 64, "checkpoint": "y",
           "n": 4}  # fmt: skip
    assert differences(saved, dict(saved)) == ""
    assert differences(saved, now, ignore={"checkpoint"}) == (
        "cfg 2.0 there, 3.0 now; vae_sha256 aaaaaaaaaaaa... there, bbbbbbbbbbbb... now; "
        "n None there, 4 now; numerics differ"
    )
    many = {f"k{i}": i for i in range(6)}
    assert differences(many, {}, now_word="here", most=2) == (
        "k0 0 there, None here; k1 1 there, None here; and 4 more"
    )
