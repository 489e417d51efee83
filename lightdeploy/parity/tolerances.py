"""The tolerance table (docs/design.md#tolerance-table), as data: one row per backend x precision.

Tensor checks apply to every floating-point output; task checks to the task's own metric.  A row can
be overridden per call (``tolerance_for(..., overrides={...})``) or from the CLI, and the report
always states the row it was judged by.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from lightdeploy.errors import UsageError


@dataclass(frozen=True)
class Tolerance:
    backend: str
    precision: str
    cosine_min: float
    # max |artifact - eager| <= abs_rel * max |eager| + abs_floor (None: not checked at this precision)
    abs_rel: float | None
    abs_floor: float | None
    top1_agreement_min: float  # classify; at int8 only over inputs whose eager margin is clear
    box_min: float  # detect: fp32 matched-box IoU; fp16/int8 box-match F1
    mask_pixels_min: float  # segment: fraction of mask pixels equal to eager's
    reason: str = "docs/design.md tolerance table"

    def as_dict(self) -> dict:
        return asdict(self)


def _fp32(backend: str) -> Tolerance:
    return Tolerance(backend, "fp32", 0.99999, 1e-4, 1e-5, 1.0, 0.99, 0.999)


def _fp16(backend: str) -> Tolerance:
    return Tolerance(backend, "fp16", 0.999, None, None, 0.99, 0.97, 0.99)


def _int8(backend: str) -> Tolerance:
    return Tolerance(backend, "int8", 0.98, None, None, 0.90, 0.85, 0.95)


BACKENDS = ("onnxruntime", "openvino", "tflite", "tensorrt")
TABLE: dict[tuple[str, str], Tolerance] = {
    (t.backend, t.precision): t
    for b in BACKENDS
    for t in (_fp32(b), _fp16(b), _int8(b))
    if not (b == "onnxruntime" and t.precision != "fp32")  # ORT artifacts are fp32 only
}


def tolerance_for(backend: str, precision: str, overrides: dict | None = None) -> Tolerance:
    try:
        row = TABLE[(backend, precision)]
    except KeyError:
        known = ", ".join(f"{b}/{p}" for b, p in TABLE)
        raise UsageError(f"No tolerance row for {backend}/{precision}. Rows: {known}.") from None
    if overrides:
        unknown = set(overrides) - set(row.as_dict())
        if unknown:
            raise UsageError(f"Unknown tolerance field(s) {sorted(unknown)}; fields: {sorted(row.as_dict())}.")
        row = replace(row, **overrides, reason="overridden: " + ", ".join(f"{k}={v}" for k, v in overrides.items()))
    return row
