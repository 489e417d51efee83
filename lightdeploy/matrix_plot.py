"""The matrix's PNG: latency against parity error, one panel per model (small multiples).

Models differ in latency by three orders of magnitude, and a table of every registered model has more
than a hundred artifacts: one shared plot buries the labels.  Each model gets its own panel at its own
latency scale, the parity-error axis is shared, and each point is labelled by its target and
precision.  The cells are ``matrix.MatrixCell``s (read by attribute only).
"""

from __future__ import annotations

import math
from pathlib import Path

from lightdeploy.errors import MissingDependencyError

COLOURS = {"onnx": "#4c78a8", "openvino": "#f58518", "tflite": "#54a24b"}
MARKERS = {"fp32": "o", "fp16": "s", "int8": "^"}
SHORT = {"onnx": "ort", "openvino": "ov", "tflite": "tfl"}
FLOOR = 1e-9  # fp32 cells often agree to the last bit; they sit on the floor line
COLUMNS = 4


def write_plot(cells, path: Path) -> None:
    """Latency vs parity error (1 - worst cosine), log-log, a panel per model; a red edge is a failed gate."""
    try:
        import matplotlib
        import matplotlib.ticker

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ModuleNotFoundError:
        raise MissingDependencyError("The matrix plot needs matplotlib: pip install 'lightdeploy[eval]'.") from None
    timed = [c for c in cells if c.median_ms is not None and c.parity_error is not None]
    models = list(dict.fromkeys(c.model for c in timed)) or ["(no timed cell)"]
    cols = min(COLUMNS, len(models))
    rows = math.ceil(len(models) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, 3.3 * rows + 0.8), dpi=100, sharey=True, squeeze=False)
    for ax, model in zip(axes.flat, models):
        _panel(ax, model, [c for c in timed if c.model == model], matplotlib)
    for ax in axes.flat[len(models) :]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("1 - worst cosine")
    for ax in axes[-1, :]:
        ax.set_xlabel("latency, median (ms)")
    handles = [
        plt.Line2D([], [], color=v, marker="o", linestyle="", label=f"{k} ({SHORT[k]})") for k, v in COLOURS.items()
    ]
    handles += [plt.Line2D([], [], color="black", marker=v, linestyle="", label=k) for k, v in MARKERS.items()]
    fig.legend(handles=handles, loc="upper right", ncol=len(handles), fontsize=8)
    fig.suptitle(
        f"lightdeploy matrix: latency vs parity error per model (floor {FLOOR:g}; red edge = gate failed)",
        x=0.01,
        ha="left",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.6 / fig.get_figheight()))
    fig.savefig(path)
    plt.close(fig)


def _panel(ax, model: str, cells, matplotlib) -> None:
    for c in cells:
        y = max(c.parity_error, FLOOR)
        failed = c.status != "pass"
        ax.scatter(
            c.median_ms,
            y,
            c=COLOURS.get(c.target, "grey"),
            marker=MARKERS.get(c.precision, "o"),
            edgecolors="red" if failed else "black",
            linewidths=2 if failed else 0.5,
            s=40,
            zorder=3,
        )
        on_floor = y == FLOOR  # the fp32 cells crowd the floor line: their labels rise at an angle
        ax.annotate(
            f"{SHORT.get(c.target, c.target)}/{c.precision}",
            (c.median_ms, y),
            xytext=(2, 4) if on_floor else (4, 2),
            textcoords="offset points",
            fontsize=7,
            rotation=60 * on_floor,
        )
    ax.set_title(model, fontsize=9)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylim(FLOOR / 3, 3)  # room above 1 for the labels of detectors' int8 scores
    ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.margins(x=0.35)  # room for the labels of the rightmost points
    ax.grid(True, which="both", alpha=0.3)
