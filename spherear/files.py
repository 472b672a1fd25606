"""Files that survive a kill at any instant, and the one-line errors of the file system.

Every artefact is written under a temporary name beside its final one (``.NAME.PID.tmp``),
flushed to disk and renamed, so it exists whole or not at all; folders are published the
same way. A killed process leaves only temporaries, which ``sweep`` removes once their
writer is gone. ``file_record`` notes an artefact's size and sha256 when it is written and
``check_record`` compares them when it is read, so damage done later (a truncated copy, a
full disk elsewhere) is named instead of read. ``JsonLines`` is an append-only log whose
torn last line (a kill during an append) is dropped, never parsed.

OS errors become ``OutputError``: one line naming the path and the fix.

Crash injection, for the tests: with ``SPHEREAR_CRASH_AT=POINT`` (or ``POINT#N``, the N-th
time) the process kills itself with SIGKILL when it reaches that write point, after the
temporary is written and before it is renamed (an append writes half its line first);
``SPHEREAR_CRASH_LOG=FILE`` appends every point reached, as ``POINT#N``, to FILE.

This module imports nothing from the pipeline, so every stage can use it.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import warnings
import zipfile
from collections import Counter
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from spherear.errors import SpherearError

TEMPORARY = re.compile(r"^\..+\.(\d+)\.tmp$")
_reached: Counter[str] = Counter()


class OutputError(SpherearError):
    """A file or folder that cannot be written or read back; names the path and the fix."""


class DamagedError(SpherearError):
    """An artefact that is not what was written: truncated, unreadable or of another size."""


# ---------------------------------------------------------------------------------------
# Crash injection


def crash_point(name: str) -> bool:
    """Note that write point ``name`` is reached; True if the process must die here (the
    caller may first leave a torn write behind, then call ``die``)."""
    target, log = os.environ.get("SPHEREAR_CRASH_AT"), os.environ.get("SPHEREAR_CRASH_LOG")
    if not target and not log:
        return False
    _reached[name] += 1
    label = f"{name}#{_reached[name]}"
    if log:
        with open(log, "a") as f:
            f.write(label + "\n")
    return target == label or (target == name and _reached[name] == 1)


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _maybe_die(name: str) -> None:
    if crash_point(name):
        die()


def note(message: str) -> None:
    """A one-line remark on stderr (what was repaired, what was adopted), between progress
    bars rather than through them."""
    from tqdm import tqdm

    tqdm.write(f"note: {message}", file=sys.stderr)


# ---------------------------------------------------------------------------------------
# OS errors in one line

_FIXES = {
    errno.ENOSPC: "no space left on the device; free some space or write elsewhere, then "
    "rerun the same command (finished parts are kept)",
    errno.EDQUOT: "disk quota exceeded; free some space or write elsewhere, then rerun",
    errno.EROFS: "read-only file system; choose an output on a writable disk",
    errno.EACCES: "permission denied; choose another output or fix the folder's permissions",
    errno.EPERM: "operation not permitted; choose another output or fix its permissions",
    errno.ENOTDIR: "a file stands where a folder is needed; move the file or choose another path",
    errno.EISDIR: "is a folder where a file is needed; remove it or choose another path",
    errno.ENOENT: "no such file or folder",
    errno.ENAMETOOLONG: "the name is too long for the file system; choose a shorter path",
    errno.EMFILE: "too many open files; raise the limit (ulimit -n)",
    errno.EFBIG: "file too large for this file system; write elsewhere",
    errno.EIO: "input/output error: the disk may be failing",
}


def explain(error: OSError, path: str | Path | None = None) -> str:
    """``PATH: what went wrong; what to do``, for any OSError."""
    where = path or error.filename or "a file"
    if error.filename2 and not path:
        where = f"{error.filename} -> {error.filename2}"
    what = _FIXES.get(error.errno) or (error.strerror or type(error).__name__)
    return f"{where}: {what}"


def _errno_of(error: BaseException) -> int | None:
    """The errno behind an error that some libraries (safetensors, torch) wrap as text."""
    if isinstance(error, OSError):
        return error.errno
    text = str(error)
    found = re.search(r"(?:code: |\[Errno )(\d+)", text)
    if found:
        return int(found.group(1))
    return errno.ENOSPC if "No space left" in text else None


# ---------------------------------------------------------------------------------------
# Writing


def temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _discard(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def atomic_write(
    path: str | Path,
    content: bytes | str | Callable[[Path], Any],
    point: str,
    record: bool = False,
) -> dict | None:
    """Write ``content`` (bytes, text, or a function that writes the file it is given) to
    ``path`` whole or not at all; ``record``: return its ``file_record``."""
    path = Path(path)
    tmp = temporary(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes | str):
            with open(tmp, "wb") as f:
                f.write(content.encode() if isinstance(content, str) else content)
        else:
            content(tmp)
        _fsync(tmp)
        _maybe_die(point)
        os.replace(tmp, path)
        _fsync(path.parent)
    except BaseException as e:
        _discard(tmp)
        number = _errno_of(e)
        if number is None:
            raise
        raise OutputError(explain(OSError(number, os.strerror(number)), path)) from None
    return file_record(path) if record else None


def write_json(path: str | Path, value: Any, point: str, record: bool = False) -> dict | None:
    return atomic_write(path, json.dumps(value, indent=1) + "\n", point, record)


def new_folder(final: str | Path) -> Path:
    """An empty temporary folder beside ``final``, to be filled and then ``publish``-ed."""
    tmp = temporary(Path(final))
    try:
        _discard(tmp)
        tmp.mkdir(parents=True)
    except OSError as e:
        raise OutputError(explain(e, tmp)) from None
    return tmp


def publish(tmp: Path, final: str | Path, point: str) -> Path:
    """Rename the finished folder ``tmp`` to ``final``, replacing what was there: a kill
    leaves either the old folder or the new one under the final name (or, between the two
    renames, neither, and a temporary that ``sweep`` removes)."""
    final = Path(final)
    try:
        _fsync(tmp)  # its files were written by atomic_write, each already on disk
        _maybe_die(point)
        old = None
        if final.exists():
            old = final.with_name(f".{final.name}.old.{os.getpid()}.tmp")
            _discard(old)
            final.rename(old)
        tmp.rename(final)
        _fsync(final.parent)
        if old is not None:
            _discard(old)
    except OSError as e:
        raise OutputError(explain(e, final)) from None
    return final


def remove(path: str | Path, point: str) -> None:
    """Delete a file or folder so that a kill half-way leaves only a temporary: it is
    renamed out of the way first."""
    path = Path(path)
    if not path.exists():
        return
    _maybe_die(point)
    doomed = temporary(path)
    try:
        _discard(doomed)
        path.rename(doomed)
        _discard(doomed)
    except OSError as e:
        raise OutputError(explain(e, path)) from None


def sweep(folder: str | Path, recursive: bool = True) -> list[Path]:
    """Remove the temporaries that killed processes left in ``folder`` (and its subfolders);
    those of running processes stay."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    gone = []
    for entry in sorted(folder.iterdir()):
        found = TEMPORARY.match(entry.name)
        if found and not _running(int(found.group(1))):
            _discard(entry)
            gone.append(entry)
        elif recursive and entry.is_dir() and not entry.is_symlink():
            gone += sweep(entry)
    return gone


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return False  # our own temporaries are never live when a stage starts
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ---------------------------------------------------------------------------------------
# Checking outputs before the work and artefacts after it


def check_output(path: str | Path, option: str, folder: bool = True) -> None:
    """Before any work: ``path`` can be written as a folder (``folder``) or a file. Raises
    one line naming ``option`` (say ``--out``) if it exists as the other kind or if the
    nearest existing folder above it is not writable."""
    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        kind = "a folder" if path.is_dir() else "a file"
        raise OutputError(
            f"{option} {path}: is {kind}, not the {'folder' if folder else 'file'} it needs; "
            f"choose another path or move it away"
        )
    probe = path if path.is_dir() else path.parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise OutputError(
            f"{option} {path}: {probe} is a file, so nothing can be created under it; "
            "choose another path"
        )
    if not os.access(probe, os.W_OK | os.X_OK):
        why = "read-only" if _read_only(probe) else "not writable"
        raise OutputError(
            f"{option} {path}: {probe} is {why}; choose an output on a writable disk or fix "
            "its permissions"
        )


def _read_only(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def differences(
    saved: dict, now: dict, ignore: Collection[str] = (), now_word: str = "now", most: int = 4
) -> str:
    """What differs between the settings an earlier run recorded (``saved``) and those of
    ``now``, but for the keys ``ignore``, as words for a one-line refusal: "KEY A there, B
    now" (hashes cut short) for values, "KEY differ" for tables; "" when they match."""
    keys = [k for k in {**saved, **now} if k not in ignore and saved.get(k) != now.get(k)]
    shown = [k for k in keys if not isinstance(saved.get(k, now.get(k)), dict)]
    words = [f"{k} {_show(k, saved.get(k))} there, {_show(k, now.get(k))} {now_word}"
             for k in shown[:most]]  # fmt: skip
    if len(shown) > most:
        words.append(f"and {len(shown) - most} more")
    tables = [k for k in keys if k not in shown]
    if tables:
        words.append(f"{', '.join(tables)} differ")
    return "; ".join(words)


def _show(key: str, value: Any) -> str:
    hashed = key.endswith(("sha256", "fingerprint")) and isinstance(value, str)
    return f"{value[:12]}..." if hashed else repr(value)


def sha256_file(path: str | Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def file_record(path: str | Path) -> dict:
    """What ``check_record`` later compares: the size and the sha256 of ``path``."""
    return {"bytes": Path(path).stat().st_size, "sha256": sha256_file(path)}


def check_record(path: str | Path, record: dict, content: bool = True) -> str | None:
    """None if ``path`` has the size (and, with ``content``, the sha256) of ``record``,
    else what differs, in words."""
    path = Path(path)
    if not path.is_file():
        return f"{path.name} is missing"
    size = path.stat().st_size
    if size != record.get("bytes"):
        return f"{path.name} has {size} bytes, {record.get('bytes')} were written"
    if content and sha256_file(path) != record.get("sha256"):
        return f"{path.name} does not hold the bytes that were written (sha256 differs)"
    return None


def safetensors_header(path: str | Path) -> tuple[dict, int]:
    """The tensor entries of a safetensors file's JSON header (name -> dtype, shape,
    data_offsets), read without its tensor bytes, and where the bytes start;
    ``DamagedError`` if it has no readable header."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            length = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(length)) if 0 < length <= 100 << 20 else None
        if header is None:
            raise DamagedError(f"{path}: {path.name} has no safetensors header")
        entries = {k: t for k, t in header.items() if k != "__metadata__"}
        for t in entries.values():
            t["shape"], t["data_offsets"] = tuple(t["shape"]), tuple(t["data_offsets"])
    except DamagedError:
        raise
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
        raise DamagedError(
            f"{path}: {path.name} has an unreadable safetensors header ({type(e).__name__})"
        ) from None
    return entries, 8 + length


def check_safetensors(path: str | Path) -> str | None:
    """None if ``path`` is as long as its safetensors header says, else what is wrong: a
    check of truncation that reads a few bytes, for files written without a record."""
    path = Path(path)
    try:
        header, start = safetensors_header(path)
    except DamagedError as e:
        return str(e).split(": ", 1)[1]
    end = max((t["data_offsets"][1] for t in header.values()), default=0)
    size, expected = path.stat().st_size, start + end
    if size != expected:
        return f"{path.name} has {size} bytes, its header needs {expected}"
    return None


def check_records(folder: str | Path, records: dict[str, dict], content: bool = True) -> None:
    """Raise ``DamagedError`` naming the first file of ``folder`` that differs from its
    record."""
    for name, record in records.items():
        problem = check_record(Path(folder) / name, record, content)
        if problem:
            raise DamagedError(f"{Path(folder) / name}: damaged ({problem})")


# ---------------------------------------------------------------------------------------
# The cache


def cache_dir(kind: str = "features") -> Path:
    """``$SPHEREAR_CACHE/<kind>``, else ``~/.cache/spherear/<kind>``; where that cannot be
    written (a read-only HOME), a folder of this user's in the temporary directory, said
    once: a cache must never stop a command after its work is done."""
    root = os.environ.get("SPHEREAR_CACHE")
    folder = Path(root) / kind if root else Path.home() / ".cache" / "spherear" / kind
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if os.access(folder, os.W_OK | os.X_OK):
            return folder
    except OSError:
        pass
    fallback = Path(tempfile.gettempdir()) / f"spherear-cache-{os.getuid()}" / kind
    if kind not in _fallbacks_said:
        note(f"{folder} cannot be written; caching in {fallback} instead (set SPHEREAR_CACHE "
             "to choose)")  # fmt: skip
        _fallbacks_said.add(kind)
    fallback.mkdir(parents=True, exist_ok=True)
    return fallback


_fallbacks_said: set[str] = set()


# ---------------------------------------------------------------------------------------
# Reading


def read_text(path: str | Path, fix: str) -> str:
    """UTF-8 text; a missing, unreadable or non-UTF-8 file is one line ending in ``fix``."""
    path = Path(path)
    try:
        return path.read_bytes().decode()
    except UnicodeDecodeError as e:
        raise DamagedError(
            f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at position {e.start}); {fix}"
        ) from None
    except OSError as e:
        raise DamagedError(f"{explain(e, path)}; {fix}") from None


def read_json(path: str | Path, fix: str) -> Any:
    """Parsed JSON; a missing or damaged file is one line ending in ``fix``."""
    text = read_text(path, fix)
    try:
        return json.loads(text)
    except RecursionError:
        raise DamagedError(f"{path}: damaged, nested too deeply to be read; {fix}") from None
    except json.JSONDecodeError as e:
        what = "empty" if not text.strip() else f"not valid JSON ({e})"
        raise DamagedError(f"{path}: damaged, {what}; {fix}") from None


def check_zip_inflation(path: Path, archive: zipfile.ZipFile) -> None:
    """torch.save stores the members of its zip uncompressed, so they inflate to about the
    file's size; members that would inflate to more than twice it are refused before one
    byte is inflated (a small file must not cost gigabytes of memory)."""
    total, size = sum(i.file_size for i in archive.infolist()), path.stat().st_size
    if total > 2 * size + (1 << 20):
        raise DamagedError(
            f"{path}: its zip members inflate to {total} bytes from a {size}-byte file; "
            "torch.save never compresses, so this is no torch checkpoint (a zip bomb?)"
        )


def load_torch_file(path: str | Path, allowed: tuple = (), what: str = "torch file") -> Any:
    """``torch.load`` that only builds tensors, containers and the ``allowed`` classes: a
    file that asks for anything else (code to run) is refused in one line, without the
    advice to unpickle it fully that torch's own message gives."""
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        what = "a folder, not a file" if path.exists() else "no such file or folder"
        raise DamagedError(f"{path}: {what}")
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            check_zip_inflation(path, archive)
    try:
        # torch warns about the legacy format and mmap before its own refusal: one line only
        with torch.serialization.safe_globals(list(allowed)), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as e:
                if "mmap" not in str(e):  # torch's legacy format cannot be memory-mapped
                    raise
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL (\S+)", str(e))
        if found is None:
            raise DamagedError(f"{path}: not a readable {what} (bad pickle)") from None
        raise DamagedError(
            f"{path}: refused to unpickle it: it asks for {found.group(1)}, and only tensors "
            "and plain containers are read, so no code in a file can run"
        ) from None
    except Exception as e:  # the unpickler fails on garbage with many exception types
        text = " ".join(str(e).split())[:160] or type(e).__name__
        raise DamagedError(f"{path}: not a readable {what} ({text})") from None


# ---------------------------------------------------------------------------------------
# Append-only logs


class JsonLines:
    """One JSON object per line, appended. A kill during an append leaves a torn last line:
    reading ignores it and the next append first cuts it off, so it is never glued to a
    new record. ``keep`` cuts the log back to its first lines with a single truncation, so
    a kill cannot lose the rest."""

    def __init__(self, path: str | Path, point: str = "log"):
        self.path = Path(path)
        self.point = point
        self._repaired = False

    def _complete_bytes(self) -> bytes:
        data = self.path.read_bytes() if self.path.is_file() else b""
        return data[: data.rfind(b"\n") + 1]

    def read(self) -> list[dict]:
        records = []
        for number, line in enumerate(self._complete_bytes().splitlines(), 1):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                raise DamagedError(
                    f"{self.path}: line {number} is not JSON; the log was edited or damaged: "
                    "delete that line"
                ) from None
        return records

    def keep(self, count: int) -> None:
        """Keep the first ``count`` complete lines (all if there are fewer)."""
        data = self._complete_bytes()
        end = 0
        for _ in range(count):
            nxt = data.find(b"\n", end)
            if nxt < 0:
                break
            end = nxt + 1
        self._truncate(end if count else 0)

    def _truncate(self, size: int) -> None:
        if self.path.is_file() and self.path.stat().st_size != size:
            try:
                os.truncate(self.path, size)
            except OSError as e:
                raise OutputError(explain(e, self.path)) from None
        self._repaired = True

    def append(self, record: dict) -> None:
        if not self._repaired:
            self._truncate(len(self._complete_bytes()))
        line = (json.dumps(record) + "\n").encode()
        try:
            with open(self.path, "ab") as f:
                if crash_point(self.point):
                    f.write(line[: len(line) // 2])
                    f.flush()
                    die()
                f.write(line)
        except OSError as e:
            raise OutputError(explain(e, self.path)) from None

    def sync(self) -> None:
        if self.path.is_file():
            _fsync(self.path)
