"""CLI messages: an HForgeError becomes one red line on stderr and exit status 1; user text is escaped.

Everything a console prints goes through rich's markup parser, which treats ``[...]`` as a style
tag: a path like ``runs/[/y]`` would crash the printing (``rich.errors.MarkupError``) and a text
like ``[np.str_('C')]`` would silently vanish.  Every piece of user or file text (paths, names,
messages of errors, SIESTA log lines) is therefore passed through :func:`escape` before it is
interpolated into a line that carries markup.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console
from rich.markup import escape as _escape

from hforge.errors import HForgeError

__all__ = ["escape", "user_errors"]


def escape(value: object) -> str:
    """``str(value)`` with rich markup escaped: printed literally by a rich console."""
    return _escape(str(value))


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn an :class:`HForgeError` into ``error: <message>`` on stderr and ``typer.Exit(1)``."""
    try:
        yield
    except HForgeError as error:
        Console(stderr=True, soft_wrap=True).print(f"[red]error:[/red] {escape(error)}", highlight=False)
        raise typer.Exit(1) from error
