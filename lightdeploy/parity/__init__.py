"""The parity gate: every artifact is compared with eager PyTorch before it is trusted."""

from lightdeploy.parity.gate import compare, run_parity
from lightdeploy.parity.report import ParityReport, write_json, write_junit
from lightdeploy.parity.tolerances import TABLE, Tolerance, tolerance_for

__all__ = [
    "run_parity",
    "compare",
    "ParityReport",
    "write_json",
    "write_junit",
    "TABLE",
    "Tolerance",
    "tolerance_for",
]
