"""Turn the library's user-facing errors into one line on stderr and exit status 2."""

from __future__ import annotations

import functools
from collections.abc import Callable

import typer

from spherear.errors import SpherearError


def user_errors(command: Callable) -> Callable:
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except SpherearError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None

    return wrapper
