"""CLI error reporting: an HForgeError becomes one red line on stderr and exit status 1."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console

from hforge.errors import HForgeError

__all__ = ["user_errors"]


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn an :class:`HForgeError` into ``error: <message>`` on stderr and ``typer.Exit(1)``."""
    try:
        yield
    except HForgeError as error:
        Console(stderr=True, soft_wrap=True).print(f"[red]error:[/red] {error}", highlight=False)
        raise typer.Exit(1) from error
