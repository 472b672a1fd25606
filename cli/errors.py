"""Turn the library's user-facing errors into one line on stderr and exit status 2: bad
input, OS errors (read-only, full disk, a file where a folder belongs) and interruptions."""

from __future__ import annotations

import functools
from collections.abc import Callable

import typer

from spherear.errors import SpherearError, Stopped


def finite(value: float | None) -> float | None:
    """Option callback for every float option: click reads "inf" and "nan" as numbers, and
    either would run a whole command to produce garbage."""
    import math

    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"must be a finite number, got {value}")
    return value


def _one_line(message: object) -> str:
    """A message quoting another library's (which may span lines) still prints as one."""
    return " ".join(str(message).split())


def _fail(message: str, code: int) -> typer.Exit:
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):  # the error starts a line of its own
        bar.close()
    typer.echo(message, err=True)
    return typer.Exit(code)


def user_errors(command: Callable) -> Callable:
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        from spherear.files import explain

        try:
            return command(*args, **kwargs)
        except Stopped as e:
            raise _fail(f"stopped: {_one_line(e)}", e.exit_code) from None
        except SpherearError as e:
            raise _fail(f"error: {_one_line(e)}", 2) from None
        except OSError as e:
            raise _fail(f"error: {_one_line(explain(e))}", 2) from None
        except KeyboardInterrupt:
            message = "interrupted: finished parts are kept; rerun the same command to continue"
            raise _fail(message, 130) from None

    return wrapper
