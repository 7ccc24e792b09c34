"""Import-order fixes for the e3nn/MACE stack; imported first by :mod:`hforge`.

e3nn 0.4.4 loads a bundled pickle with ``torch.load``; torch >= 2.6 defaults to
``weights_only=True`` and refuses it unless ``slice`` is an allowed global.  ``import
mace`` hides this by setting ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` process-wide, so
without this module the behaviour would depend on import order.  With mace imported first,
torch then warns on e3nn's own load of its constants (the variable is mace's, not the user's):
that one warning is silenced.
"""

from __future__ import annotations

import warnings

import torch

torch.serialization.add_safe_globals([slice])
warnings.filterwarnings("ignore", message="Environment variable TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD detected", category=UserWarning)


def import_mace() -> None:
    """Import mace-torch's modules with its import-time ``print`` kept off stdout.

    Without cuEquivariance, mace prints "cuequivariance or cuequivariance_torch is not available.
    Cuequivariance acceleration will be disabled." to stdout while it is imported, which would
    corrupt what HForge prints there for other programs (``hforge train --print-default-config >
    d.yaml``).  That line is dropped (HForge does not use mace's cuEquivariance path; ``hforge
    info`` reports the backends); anything else mace prints goes to stderr.
    """
    import contextlib
    import io
    import sys

    if "mace.modules" in sys.modules:
        return
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        import mace.modules  # noqa: F401
    for line in printed.getvalue().splitlines():
        if "cuequivariance" not in line.lower():
            print(line, file=sys.stderr)
