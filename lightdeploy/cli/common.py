"""What every command shares: the consoles, the error-to-exit-code wrapper, progress lines."""

from __future__ import annotations

import functools
import logging
import os
import time

import typer
from rich.console import Console
from rich.markup import escape
from rich.text import Text

from lightdeploy.errors import LightdeployError, MissingDependencyError
from lightdeploy.logs import VERBOSE_ENV

console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)  # soft wrap: messages stay whole lines when piped


# The export side's packages: a runtime-only install (`pip install lightdeploy[onnxruntime]`) lacks them.
EXPORT_PACKAGES = {"torch", "torchvision", "skimage", "safetensors"}


def handle_errors(fn):
    """Turn LightdeployError into its message and exit code; anything else is a bug and shows a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            try:
                return fn(*args, **kwargs)
            except ModuleNotFoundError as exc:
                if (exc.name or "").split(".")[0] not in EXPORT_PACKAGES:
                    raise
                raise MissingDependencyError(
                    f"`lightdeploy {fn.__name__.removesuffix('_cmd')}` needs PyTorch and the export tools "
                    f"({exc.name!r} is not installed): this install runs artifacts only. Install the export side "
                    "with: pip install 'lightdeploy[export,onnx]' (or '.[cpu]' for every CPU target)."
                ) from None
        except LightdeployError as exc:
            err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
            raise typer.Exit(exc.exit_code) from None

    return wrapper


class Progress:
    """Progress lines on stderr, each stage with the time the previous one took:
    ``… running the parity gate   [exporting to onnx (fp32) took 4.1 s]``.  Silent with --quiet.

    Called with a message, as the pipeline's ``progress`` callback; ``done()`` closes the last stage.
    ``count(done, total, what)`` (``logs.count_of``) shows a long stage's loop: redrawn in place on a
    terminal; in a log, only the last count, on the stage's closing line (``took 9.2 s, 606 runs``)."""

    REDRAW_S = 0.2

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.stage: str | None = None
        self.started = 0.0
        self.counted: tuple[int, int, str] | None = None
        self.drawn = 0.0  # when the count line was last drawn; 0: none on screen

    def __call__(self, msg: str) -> None:
        self._print(msg)
        self.stage, self.started, self.counted = msg, time.perf_counter(), None

    def count(self, done: int, total: int, what: str) -> None:
        self.counted = (done, total, what)
        now = time.perf_counter()
        if self.quiet or not err.is_terminal or (done < total and now - self.drawn < self.REDRAW_S):
            return
        amount = f"{done}/{total}" if total > 0 else str(done)  # total 0: not known in advance
        err.file.write(f"\r\x1b[2m… {self.stage}  {amount} {what}\x1b[0m\x1b[K")
        err.file.flush()
        self.drawn = now

    def done(self) -> None:
        if self.stage is not None:
            self._print("done")
        self.stage = None

    def _print(self, msg: str) -> None:
        if self.quiet:
            return
        if self.drawn:  # the count line is replaced by the next line
            err.file.write("\r\x1b[K")
            self.drawn = 0.0
        line = f"… {msg}"
        if self.stage is not None:
            counted = f", {self.counted[0]} {self.counted[2]}" if self.counted else ""
            line += f"   [{self.stage} took {time.perf_counter() - self.started:.1f} s{counted}]"
        err.print(Text(line, style="dim"))  # Text: a message's brackets are not read as markup


def configure_output(verbose: bool) -> None:
    """``--verbose`` lets the converters' own output through (``logs.verbose()``); without it, quiet the
    third-party logging that ``logs.quiet()`` cannot catch because it is decided when those libraries
    import.  Done by the CLI only: importing lightdeploy as a library changes nobody's environment."""
    if verbose:
        os.environ[VERBOSE_ENV] = "1"
        return
    # TensorFlow's C++ INFO and WARNING lines (litert-torch loads TensorFlow); read at its import
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # torchao (imported by litert-torch) warns on import about its optional kernels ("Failed to load
    # ...so") and registers an Enum in a deprecated way; neither concerns the user's export
    logging.getLogger("torchao").setLevel(logging.ERROR)
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
