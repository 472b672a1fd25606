"""Run ``spherear`` commands the way a user does, each in a process of its own with its own
exit code and stderr, without paying the seconds of imports every time: a server process
imports spherear once and forks a child per command.

Run as a script it is the server: one JSON request per line on stdin, answered with
``{"pid": PID}`` when the child starts and ``{"exit": CODE}`` when it ends (-N: killed by
signal N). A request may ask for mounts (a read-only folder, a tiny tmpfs that fills up):
the child gets a private mount namespace for them, and exits with 77 where the system
allows none.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

NO_NAMESPACE = 77


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    @property
    def lines(self) -> list[str]:
        """stderr without progress bars and blank lines: what a user reads."""
        return [ln for ln in self.stderr.splitlines() if ln.strip() and "%|" not in ln]


class Job:
    def __init__(self, server: ForkServer, pid: int, out: Path, err: Path):
        self.server, self.pid, self.out, self.err = server, pid, out, err

    def wait(self, timeout: float = 300) -> Result:
        code = self.server._read("exit", timeout, self.pid)
        return Result(code, self.out.read_text(), self.err.read_text())


class ForkServer:
    def __init__(self, scratch: Path):
        self.scratch = scratch
        self.count = 0
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
               "OPENBLAS_NUM_THREADS": "1", "MPLBACKEND": "Agg"}  # fmt: skip
        self.proc = subprocess.Popen(
            [sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True, env=env, cwd=scratch,
        )  # fmt: skip
        self._read("ready", 120)

    def _read(self, key: str, timeout: float, pid: int | None = None):
        import select

        deadline = time.time() + timeout
        while True:
            ready, _, _ = select.select([self.proc.stdout], [], [], max(0, deadline - time.time()))
            if not ready:
                if pid is not None:  # a hung command: kill it and report the timeout
                    os.kill(pid, 9)
                    continue
                raise TimeoutError(f"fork server: no {key} after {timeout} s")
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("the fork server died")
            message = json.loads(line)
            if key in message:
                return message[key]

    def start(self, argv: list[str], cwd: Path, env: dict | None = None, unset=(),
              mounts=(), threads: int | None = None) -> Job:  # fmt: skip
        self.count += 1
        out, err = self.scratch / f"{self.count}.out", self.scratch / f"{self.count}.err"
        request = {"argv": [str(a) for a in argv], "cwd": str(cwd), "env": env or {},
                   "unset": list(unset), "mounts": [[str(x) for x in m] for m in mounts],
                   "threads": threads, "stdout": str(out), "stderr": str(err)}  # fmt: skip
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return Job(self, self._read("pid", 30), out, err)

    def run(self, argv: list[str], cwd: Path, timeout: float = 300, **kwargs) -> Result:
        return self.start(argv, cwd, **kwargs).wait(timeout)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(30)


# ---------------------------------------------------------------------------------------
# The server side


def _namespace(mounts: list[list[str]]) -> None:
    """A private mount namespace in which each (kind, path[, options]) is mounted: "ro"
    makes path read-only, anything else mounts a tmpfs there with ``options`` (say
    "size=64k": a disk that fills up)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    clone_newns, clone_newuser = 0x00020000, 0x10000000
    ms_rdonly, ms_remount, ms_bind, ms_rec, ms_private = 1, 32, 4096, 16384, 1 << 18
    if os.geteuid() != 0:
        uid, gid = os.getuid(), os.getgid()
        if libc.unshare(clone_newuser | clone_newns) != 0:
            os._exit(NO_NAMESPACE)
        Path("/proc/self/setgroups").write_text("deny")
        Path("/proc/self/uid_map").write_text(f"0 {uid} 1")
        Path("/proc/self/gid_map").write_text(f"0 {gid} 1")
    elif libc.unshare(clone_newns) != 0:
        os._exit(NO_NAMESPACE)
    if libc.mount(None, b"/", None, ms_rec | ms_private, None) != 0:
        os._exit(NO_NAMESPACE)
    for kind, path, *options in mounts:
        target = os.path.abspath(path).encode()
        if kind == "ro":
            ok = libc.mount(target, target, None, ms_bind, None) == 0 and libc.mount(
                None, target, None, ms_bind | ms_remount | ms_rdonly, None) == 0  # fmt: skip
        else:
            ok = libc.mount(b"tmpfs", target, b"tmpfs", 0, options[0].encode()) == 0
        if not ok:
            os._exit(NO_NAMESPACE)


def _child(request: dict) -> None:
    os.setsid()  # signals sent to the child reach it alone
    os.chdir(request["cwd"])
    os.environ.update(request["env"])
    for key in request["unset"]:
        os.environ.pop(key, None)
    for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
    if request["mounts"]:
        _namespace(request["mounts"])
    if request["threads"]:
        import torch

        torch.set_num_threads(request["threads"])
    sys.argv = ["spherear", *request["argv"]]
    code = 1
    try:
        from spherear.cli import main

        main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def serve() -> None:
    # everything the commands import, once
    import accelerate  # noqa: F401
    import datasets  # noqa: F401
    import matplotlib.pyplot  # noqa: F401
    import pyarrow.parquet  # noqa: F401
    import torch._dynamo  # noqa: F401  (an optimizer's constructor imports it: 2 s)
    import torch.distributed.checkpoint.state_dict  # noqa: F401
    import torch_fidelity.feature_extractor_inceptionv3  # noqa: F401

    import spherear.cli  # noqa: F401
    import spherear.data.latent_cache  # noqa: F401
    import spherear.eval.features  # noqa: F401
    import spherear.eval.probe  # noqa: F401
    import spherear.files
    import spherear.sample  # noqa: F401
    import spherear.train.ar  # noqa: F401
    import spherear.train.curves  # noqa: F401
    import spherear.train.vae  # noqa: F401

    figure = matplotlib.pyplot.figure()  # matplotlib loads its fonts on the first save
    figure.savefig(io.BytesIO(), format="png")
    matplotlib.pyplot.close(figure)
    # fsync guards against power loss, which no test here simulates; kills are what they test
    spherear.files._fsync = lambda path: None

    def say(message: dict) -> None:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()

    say({"ready": True})
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(request)
        say({"pid": pid})
        _, status = os.waitpid(pid, 0)
        say({"exit": os.waitstatus_to_exitcode(status)})


if __name__ == "__main__":
    serve()
