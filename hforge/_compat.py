"""Imports of the e3nn/MACE stack with what they need, scoped to the import: nothing global changes.

e3nn 0.4.4 loads a bundled pickle with ``torch.load`` when ``e3nn.o3`` is imported; torch >= 2.6
defaults to ``weights_only=True`` and refuses it unless ``slice`` is an allowed global.  ``import
mace`` sets ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` process-wide (mace's own change), after which
torch warns on e3nn's load of its constants.  :func:`import_e3nn` and :func:`import_mace` import
them inside ``torch.serialization.safe_globals([slice])`` and a ``warnings.catch_warnings()`` block
that ignores that one warning: torch's allow-list and the warning filters are as they were
afterwards.  Every HForge module that imports e3nn or mace at the top runs one of them first
(``hforge.models``, ``hforge.ops.cg_blocks``); importing ``hforge`` itself changes nothing.
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
import warnings
from collections.abc import Iterator

__all__ = ["import_e3nn", "import_mace"]

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def _e3nn_import() -> Iterator[None]:
    """The context e3nn's import needs: ``slice`` allowed for ``torch.load``, mace's variable's warning ignored."""
    import torch

    with torch.serialization.safe_globals([slice]), warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="Environment variable TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD detected", category=UserWarning
        )
        yield


def import_e3nn() -> None:
    """Import ``e3nn.o3`` (once per process) in the context its import needs (module docstring)."""
    if "e3nn.o3" in sys.modules:
        return
    with _e3nn_import():
        import e3nn.o3  # noqa: F401


def import_mace() -> None:
    """Import mace-torch's modules (once per process; e3nn with them, module docstring), with
    what mace prints while it is imported kept off stdout.

    Without cuEquivariance, mace prints "cuequivariance or cuequivariance_torch is not available.
    Cuequivariance acceleration will be disabled." to stdout while it is imported, which would
    corrupt what HForge prints there for other programs (``hforge train --print-default-config >
    d.yaml``).  Its lines go to this module's logger instead: the cuequivariance line at DEBUG
    (HForge does not use mace's cuEquivariance path; ``hforge info`` reports the backends), any
    other at INFO.
    """
    if "mace.modules" in sys.modules:
        return
    printed = io.StringIO()
    with _e3nn_import(), contextlib.redirect_stdout(printed):
        import mace.modules  # noqa: F401
    for line in printed.getvalue().splitlines():
        logger.log(logging.DEBUG if "cuequivariance" in line.lower() else logging.INFO, "mace-torch: %s", line)
