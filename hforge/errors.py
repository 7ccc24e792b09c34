"""Exception hierarchy of HForge.

Every error HForge raises on purpose is an :class:`HForgeError`.  Errors about a
file carry its path and print it first, so that a user with a folder of hundreds
of SIESTA runs knows which one is broken::

    HForgeError
    ├── InputError (also ValueError)        bad input from the user
    │   ├── FileFormatError                 malformed, truncated or unreadable file
    │   ├── BasisMismatchError              basis and matrices/geometry disagree
    │   │   ├── MissingBasisError           a file that carries no basis, and none found or given
    │   │   └── OverlapMismatchError        S computed from the basis differs from a file's S
    │   ├── UnknownSpeciesError             species absent from a basis or a model
    │   ├── GeometryError                   NaN positions, overlapping atoms, empty cell
    │   ├── InvalidMatrixError              NaN/inf H or S entries, S not positive definite
    │   └── ConfigError                     invalid configuration (YAML, CLI options)
    ├── UnsupportedSystemError              valid input that HForge cannot handle yet
    │   └── FoldedMatrixError               a Γ-only file whose pairs couple through several periodic images
    ├── ConvergenceError                    a SIESTA run that did not converge
    ├── OutputError                         a file that could not be written (full disk, read-only place)
    ├── ResourceLimitError                  a memory budget too small for the work
    └── BackendUnavailableError (also RuntimeError)  a kernel backend missing here

Warnings (results HForge returns but that the user should not trust blindly)::

    HForgeWarning (also UserWarning)
    ├── OverlapWarning                      a learned S that is (or may be) not positive definite
    └── OutOfDomainWarning                  a structure unlike the model's training structures
"""

from __future__ import annotations

import os

__all__ = [
    "HForgeError",
    "InputError",
    "FileFormatError",
    "BasisMismatchError",
    "MissingBasisError",
    "OverlapMismatchError",
    "UnknownSpeciesError",
    "GeometryError",
    "InvalidMatrixError",
    "ConfigError",
    "UnsupportedSystemError",
    "FoldedMatrixError",
    "ConvergenceError",
    "OutputError",
    "ResourceLimitError",
    "BackendUnavailableError",
    "HForgeWarning",
    "OverlapWarning",
    "OutOfDomainWarning",
]


class HForgeError(Exception):
    """Base class of all HForge errors.

    Args:
        message: what is wrong, in words a user can act on.
        path: the file or folder concerned, if any; it is printed before the message.
    """

    def __init__(self, message: str, *, path: str | os.PathLike | None = None) -> None:
        self.message = message
        self.path = None if path is None else os.fspath(path)
        super().__init__(f"{self.path}: {message}" if self.path else message)


class InputError(HForgeError, ValueError):
    """Input that HForge refuses: the user has to fix it."""


class FileFormatError(InputError):
    """A file that is malformed, truncated, of an unknown kind or unreadable."""


class BasisMismatchError(InputError):
    """A basis that does not match the matrices, geometry or model it is used with."""


class MissingBasisError(BasisMismatchError):
    """An H/S file that carries no basis (a bare TSHS, HForge's own among them) when no basis is
    given and no ion files are found beside it."""


class OverlapMismatchError(BasisMismatchError):
    """S computed from the basis (two-centre integrals) that differs from the S a SIESTA run wrote:
    the basis is not the run's, or the geometry is not the one the run used."""


class UnknownSpeciesError(InputError):
    """A chemical species that a basis set or a trained model does not know."""


class GeometryError(InputError):
    """A structure that cannot be physical: NaN/inf positions, overlapping atoms, empty or degenerate cell."""


class InvalidMatrixError(InputError):
    """H or S matrices that no valid calculation gives: NaN/inf entries, S not positive definite."""


class ConfigError(InputError):
    """A configuration (YAML file or CLI options) that is invalid or inconsistent with the data."""


class UnsupportedSystemError(HForgeError):
    """Valid input that HForge does not support yet (e.g. non-collinear spin, spin-orbit)."""


class FoldedMatrixError(UnsupportedSystemError):
    """A Γ-only SIESTA file (nsc 1 1 1) whose H and S sum several periodic images of one atom pair
    into one block: the images cannot be told apart, so the file holds H(Γ) and S(Γ) only."""


class ConvergenceError(HForgeError):
    """A calculation (e.g. a SIESTA SCF cycle) that did not converge."""


class OutputError(HForgeError):
    """A file that could not be written (full disk, a read-only or special folder such as ``/proc``);
    the writers leave no partial or temporary file behind."""


class ResourceLimitError(HForgeError):
    """A resource budget (e.g. ``max_memory``) below what the work needs; the message names the minimum."""


class BackendUnavailableError(HForgeError, RuntimeError):
    """A kernel backend that cannot run here; the message says why."""


class HForgeWarning(UserWarning):
    """Base class of HForge's warnings: a result is returned, but with a caveat the user should know."""


class OverlapWarning(HForgeWarning):
    """A predicted S that is not positive definite, or that could not be checked (a learned S)."""


class OutOfDomainWarning(HForgeWarning):
    """A structure unlike the model's training structures (species, neighbour distances or
    counts outside what it was trained on): the prediction is an extrapolation."""
