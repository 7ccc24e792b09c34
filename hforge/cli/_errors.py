"""CLI messages and signals: an HForgeError becomes one red line on stderr and exit status 1; user
text is escaped; SIGTERM stops a command like Ctrl-C does, cleaning up its temporary files.

Everything a console prints goes through rich's markup parser, which treats ``[...]`` as a style
tag: a path like ``runs/[/y]`` would crash the printing (``rich.errors.MarkupError``) and a text
like ``[np.str_('C')]`` would silently vanish.  Every piece of user or file text (paths, names,
messages of errors, SIESTA log lines) is therefore passed through :func:`escape` before it is
interpolated into a line that carries markup.

SIGTERM (what ``timeout``, batch schedulers and ``torchrun`` send) ends a Python process at once,
without running ``finally`` blocks, so writes in progress would leave their temporary files
(``.out.<pid>.tmp.TSHS``).  :func:`handle_sigterm` turns it into the exception :class:`Terminated`
instead: the code unwinds as after Ctrl-C, every writer removes its temporary file, and the process
exits with status 143 (128 + SIGTERM, what a shell reports for a process killed by it).
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

import typer
from rich.console import Console
from rich.markup import escape as _escape

from hforge.errors import HForgeError

__all__ = ["Terminated", "configure_logging", "escape", "handle_sigterm", "printed_warnings", "user_errors"]

#: Exit status of a command stopped by SIGTERM.
SIGTERM_STATUS = 128 + signal.SIGTERM


class Terminated(SystemExit):
    """SIGTERM received: unwinds like ``KeyboardInterrupt`` (``finally`` blocks run), exit status 143."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    print("hforge: terminated by SIGTERM; removing temporary files", file=sys.stderr, flush=True)
    raise Terminated(SIGTERM_STATUS)


def handle_sigterm() -> Callable[[], None]:
    """Raise :class:`Terminated` on SIGTERM from now on (main thread only; elsewhere nothing changes).

    Returns:
        A function that restores the previous handler.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    return lambda: signal.signal(signal.SIGTERM, previous)


class _LevelFormatter(logging.Formatter):
    """``warning: <message>``, ``info: <message>``: the CLI's own line style (``error: ...``)."""

    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {record.getMessage()}"


_handler: logging.Handler | None = None


def configure_logging(verbose: bool) -> None:
    """HForge's loggers (``hforge.*``) to the command's stderr: warnings always, INFO too when
    ``verbose``.  One handler however many commands a process runs (the tests run many)."""
    global _handler
    logger = logging.getLogger("hforge")
    if _handler is not None:
        logger.removeHandler(_handler)
    _handler = logging.StreamHandler(sys.stderr)
    _handler.setFormatter(_LevelFormatter())
    logger.addHandler(_handler)
    logger.setLevel(logging.INFO if verbose else logging.WARNING)


def escape(value: object) -> str:
    """``str(value)`` with rich markup escaped: printed literally by a rich console."""
    return _escape(str(value))


@contextmanager
def printed_warnings(console: Console) -> Iterator[None]:
    """Print the :class:`~hforge.errors.HForgeWarning` s raised in the block as ``warning: <message>``
    lines on ``console`` (each once, also when the block fails); other warnings are shown as usual."""
    import warnings

    from hforge.errors import HForgeWarning

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", HForgeWarning)
            yield
    finally:  # outside catch_warnings: showwarning writes to stderr again
        seen = set()
        for item in caught:
            if not issubclass(item.category, HForgeWarning):
                warnings.showwarning(item.message, item.category, item.filename, item.lineno)
            elif str(item.message) not in seen:
                seen.add(str(item.message))
                console.print(f"[yellow]warning:[/yellow] {escape(item.message)}", highlight=False)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn an :class:`HForgeError` into ``error: <message>`` on stderr and ``typer.Exit(1)``."""
    try:
        yield
    except HForgeError as error:
        Console(stderr=True, soft_wrap=True).print(f"[red]error:[/red] {escape(error)}", highlight=False)
        raise typer.Exit(1) from error
