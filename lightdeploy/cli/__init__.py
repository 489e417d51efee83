"""The ``lightdeploy`` command line (typer + rich).  The only place that turns errors into exit codes.

Exit codes (docs/design.md#exit-codes): 0 success, 1 parity failed, 2 bad input or usage, 3 missing
dependency or unsupported environment.  The commands live in ``export.py`` (export, parity, check,
build) and ``run.py`` (list, info, predict, bench, eval, triton); this module puts them on one app.
"""

from __future__ import annotations

import os
import signal
import sys

import typer

from lightdeploy.cli import export, run
from lightdeploy.cli.common import configure_output

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Lightweight vision models from PyTorch to the edge, with parity proven against eager.",
)


@app.callback()
def options(
    verbose: bool = typer.Option(
        False, "--verbose", help="Show the converters' own output and warnings (sets LIGHTDEPLOY_VERBOSE=1)."
    ),
):
    configure_output(verbose)


app.command("list")(run.list_cmd)
app.command()(run.info)
app.command()(export.export)
app.command()(export.parity)
app.command()(run.predict)
app.command()(run.bench)
app.command("eval")(run.eval_cmd)
app.command()(export.check)
app.command()(export.build)
app.command()(run.triton)


def main() -> None:
    # `kill` (SIGTERM) unwinds like Ctrl-C, so the staging folder of an export in flight is removed
    # rather than left beside the artifacts; 143 is the shell's code for a SIGTERM death.
    signal.signal(signal.SIGTERM, _terminated)
    try:
        app()
    except _Terminated as stop:
        # The unwinding has run every cleanup.  The interpreter's own finalisation is skipped: it frees
        # the native objects caught in reference cycles through the interrupted frames, and one of
        # them can abort the process there (docs/measurements.md#sigterm-finalisation).
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(stop.code)
    finally:
        # A signal that arrives after the command's work is done ends the process the default way,
        # not with a traceback from inside an exit handler.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


class _Terminated(SystemExit):
    """SIGTERM, raised where the main thread is when it arrives."""


def _terminated(signum, frame) -> None:
    raise _Terminated(128 + signum)
