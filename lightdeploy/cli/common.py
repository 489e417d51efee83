"""What every command shares: the consoles, the error-to-exit-code wrapper, progress lines."""

from __future__ import annotations

import functools

import typer
from rich.console import Console
from rich.markup import escape

from lightdeploy.errors import LightdeployError, MissingDependencyError

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


def progress_printer(quiet: bool):
    if quiet:
        return lambda msg: None
    return lambda msg: err.print(f"[dim]… {msg}[/]", highlight=False)
