"""Keeping third-party tools quiet while lightdeploy shows its own progress.

The converters print progress trees, absl/TensorFlow INFO lines and warnings that are noise to a user
of ``lightdeploy export``; ``quiet()`` hides them for one step.  ``LIGHTDEPLOY_VERBOSE=1`` (the CLI's
``--verbose``) lets everything through, for debugging a converter.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Callable

VERBOSE_ENV = "LIGHTDEPLOY_VERBOSE"

Count = Callable[[int, int, str], None]  # (done, total or 0 if unknown, what is counted): a long loop's progress


def count_of(progress) -> Count | None:
    """The count channel of a ``progress`` callback (the CLI's ``Progress.count``), where it has one: a
    plain ``progress(msg)`` callable takes stage messages only."""
    return getattr(progress, "count", None)


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


@contextlib.contextmanager
def quiet(*loggers: str, stderr: bool = False):
    """Silence stdout, warnings and INFO logs of ``loggers`` (the root logger when none is named);
    with ``stderr``, the tool's stderr too (litert-torch writes its progress there)."""
    if verbose():
        yield
        return
    targets = [logging.getLogger(name) for name in loggers] or [logging.getLogger()]
    levels = [t.level for t in targets]
    for t in targets:
        t.setLevel(logging.ERROR)
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(warnings.catch_warnings())
            warnings.simplefilter("ignore")
            stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
            if stderr:
                stack.enter_context(contextlib.redirect_stderr(io.StringIO()))
            yield
    finally:
        for t, level in zip(targets, levels):
            t.setLevel(level)


@contextlib.contextmanager
def quiet_native_stderr():
    """Hide what native code writes to file descriptor 2 during the block: litert-torch's import prints
    absl's C++ INFO lines, which ``TF_CPP_MIN_LOG_LEVEL`` does not reach.  Process-wide, so only for
    short single-threaded steps such as an import; replayed if the block raises."""
    if verbose():
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        failed = False
        try:
            yield
        except BaseException:
            failed = True
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            if failed:
                sink.seek(0)
                sys.stderr.write(sink.read().decode(errors="replace"))
