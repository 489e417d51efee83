"""The errors lightdeploy raises for users, each carrying the exit code the CLI returns.

Exit codes (docs/design.md#exit-codes): 0 success, 1 parity failed, 2 bad input or usage, 3 missing dependency or
unsupported environment.  Library code raises these; only the CLI turns them into exit codes.
This module imports nothing heavy so that ``lightdeploy.runtimes`` can use it without torch.
"""

from __future__ import annotations

import difflib


class LightdeployError(Exception):
    """Base class: a message meant for a person, and the exit code for the CLI."""

    exit_code = 2


class UsageError(LightdeployError):
    """Bad input or usage: an unknown name, a wrong size, a bad file.  Nothing is written."""

    exit_code = 2


class ParityError(LightdeployError):
    """The artifact does not match eager PyTorch within the tolerance table.  The artifact is kept
    (``folder``: where, e.g. ``NAME.failed`` beside a good artifact it did not replace)."""

    exit_code = 1

    def __init__(self, message: str, folder=None):
        super().__init__(message)
        self.folder = folder


class MissingDependencyError(LightdeployError):
    """An optional package is missing, or the environment cannot run this step."""

    exit_code = 3


class ArtifactError(UsageError):
    """An artifact folder is incomplete, corrupted or tampered with."""


def unknown_name_error(kind: str, name: str, known: list[str]) -> UsageError:
    """An error for an unknown name that suggests the closest known ones."""
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return UsageError(f"Unknown {kind} {name!r}.{hint} Known {kind}s: {', '.join(sorted(known))}.")


def missing_package(package: str, extra: str, purpose: str) -> MissingDependencyError:
    """An error for an optional package that is not installed, naming the extra that brings it."""
    return MissingDependencyError(
        f"{purpose} needs the Python package {package!r}, which is not installed. "
        f"Install it with: pip install 'lightdeploy[{extra}]'"
    )


def require(module: str, *, package: str, extra: str, purpose: str):
    """Import an optional module where it is used; a missing one names the extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise missing_package(package, extra, purpose) from exc
