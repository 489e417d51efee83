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
import warnings

VERBOSE_ENV = "LIGHTDEPLOY_VERBOSE"


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
