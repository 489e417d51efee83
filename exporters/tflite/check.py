"""The TFLite operator check: the model traced as the TFLite export traces it, every op looked up in
litert-torch's own lowering table.

The TFLite export converts the traced eager model (``convert.py``): ``torch.export``, the same
decompositions (litert-torch's and lightdeploy's op decompositions), then each remaining op is
lowered by the lowering litert-torch registers for it.  An op with no lowering fails the conversion;
this check names each such op with the nn.Module that calls it, in seconds and without converting.
(What a lowering produces is checked by the export itself: it refuses Flex and custom TFLite ops.)
"""

from __future__ import annotations

from collections import Counter

from lightdeploy.errors import require
from lightdeploy.exporters.base import ExportJob
from lightdeploy.exporters.checking import CheckReport, Finding


def check_job(job: ExportJob) -> CheckReport:
    """Check the module of an export job against litert-torch's lowerings."""
    from lightdeploy.logs import quiet_native_stderr

    with quiet_native_stderr():
        litert_torch = require(
            "litert_torch", package="litert-torch", extra="tflite", purpose="The TFLite operator check"
        )
    from litert_torch.backend import lowerings
    from litert_torch.fx_infra import decomp, safe_run_decompositions

    from lightdeploy.exporters import program
    from lightdeploy.exporters.tflite import builtins
    from lightdeploy.logs import quiet
    from lightdeploy.ops import tflite_decomposition_table

    with quiet("torch", stderr=True), builtins.registered() as kernels:
        traced = program.exported_program(job)
        # the converter's two decomposition passes (converter_v2 / backend.export), ours included
        ours = tflite_decomposition_table(kernels)
        traced = safe_run_decompositions(traced, {**decomp.pre_convert_decomp(), **ours})
        traced = safe_run_decompositions(traced, decomp.pre_lower_decomp(), can_skip=False)
        findings, counts = [], Counter()
        for node in program.op_nodes(traced):  # looked up while builtins' lowerings are registered
            name = program.op_name(node.target)
            counts[name] += 1
            if lowerings.lookup(node.target) is None:
                findings.append(
                    Finding(
                        "error",
                        node.name,
                        name,
                        program.node_module(node),
                        f"litert-torch {litert_torch.__version__} has no lowering for {name}; give the op a "
                        "plain-tensor decomposition or export to another target",
                    )
                )
    return CheckReport(
        "tflite",
        job.spec.name,
        0,
        {"litert_torch_version": litert_torch.__version__, "method": "torch.export + decompositions, lowering table"},
        dict(sorted(counts.items())),
        findings,
        checker=f"litert-torch {litert_torch.__version__} lowerings",
    )
