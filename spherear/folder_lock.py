"""One writer per output folder.

A command that writes a folder (a training run, a sample set, a prepared dataset, a latent
cache) first takes its lock: the file ``.NAME.lock`` beside the folder ``NAME``, holding the
writer's PID, host and command. The file is locked with ``flock``, which the kernel
releases when the process dies however it dies (kill -9 included), so a lock left by a
killed writer is simply taken over by the next one; a live writer's lock is refused in one
line naming it. The lock sits beside the folder, not in it, so a folder
that is published by renaming (prepare-data) or checked for emptiness keeps its content.

Under torchrun or ``accelerate launch`` only the first process (RANK 0) takes the lock:
the other ranks write with it, and a refusal ends them all with it.
"""

from __future__ import annotations

import fcntl
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from spherear.errors import SpherearError
from spherear.files import OutputError, explain


class LockedError(SpherearError):
    """Another live process writes the folder."""


def lock_path(folder: str | Path) -> Path:
    folder = Path(os.path.abspath(folder))
    return folder.with_name(f".{folder.name}.lock")


def _holder(text: str) -> str:
    words = dict(part.split("=", 1) for part in text.split() if "=" in part)
    if "pid" not in words:
        return "another process"
    return f"PID {words['pid']} on {words.get('host', '?')} ({words.get('command', '?')})"


def _open_locked(path: Path) -> int | None:
    """A descriptor of ``path`` locked by us, or None while another process holds it."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # its holder released and unlinked it before we locked it: retry


_held: dict[Path, int] = {}  # lock file -> how many holds of this process


@contextmanager
def hold(folder: str | Path, command: str) -> Iterator[None]:
    """Be the one writer of ``folder`` for the duration; the same process may hold it again
    (a stage that calls another). ``LockedError`` names a live holder."""
    if int(os.environ.get("RANK", "0")) != 0 or not str(folder).strip():
        yield
        return
    path = lock_path(folder)
    if path in _held:
        _held[path] += 1
        try:
            yield
        finally:
            _held[path] -= 1
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = _open_locked(path)
    except OSError as e:
        raise OutputError(explain(e, path)) from None
    if fd is None:
        raise LockedError(
            f"{folder}: another writer holds it ({_holder(_read(path))}); wait for it to "
            f"finish or stop it, then rerun (its lock is {path})"
        )
    # a lock file with a holder in it was left by a killed writer: ours now, silently, as
    # the rerun after a kill must behave like the first run
    mine = f"pid={os.getpid()} host={socket.gethostname()} command={command}\n"
    os.ftruncate(fd, 0)
    os.pwrite(fd, mine.encode(), 0)
    _held[path] = 1
    try:
        yield
    finally:
        _held[path] -= 1
        if not _held[path]:
            del _held[path]
            path.unlink(missing_ok=True)  # before the unlock: a waiter then sees a new file
            os.close(fd)


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""
