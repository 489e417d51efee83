"""`lightdeploy bench --matrix`: every cell exported, gated and timed; failures are rows, not crashes."""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

from lightdeploy import matrix, matrix_report
from lightdeploy.parity import tolerances

pytestmark = pytest.mark.xdist_group("matrix")

MODEL = "mobilenetv2_x0.35"
SIZE = (64, 64)


def test_cli_writes_table_json_markdown_and_plot(tmp_path: Path):
    files = {k: tmp_path / f"m.{k}" for k in ("json", "md", "png")}
    r = run_cli(
        *("bench", "--matrix", MODEL, "--to", "onnx/fp32", "--to", "ov/fp32", "--runs", "3", "--warmup", "1"),
        *("--json", str(files["json"]), "--markdown", str(files["md"]), "--plot", str(files["png"])),
        *("--out", str(tmp_path / "artifacts")),
    )
    assert r.returncode == 0, r.stderr
    assert "lightdeploy matrix" in r.stdout and "openvino/fp32" in r.stdout
    cells, _ = matrix_report.read_run(files["json"])
    assert [(c.target, c.precision, c.status) for c in cells] == [
        ("onnx", "fp32", "pass"),
        ("openvino", "fp32", "pass"),
    ]
    for c in cells:
        assert c.median_ms > 0 and c.p90_ms >= c.median_ms and c.size_mb > 1 and c.x_eager > 0
        assert c.batch8_ips > 0  # classifiers are exported with a dynamic batch for the batch-8 column
    assert cells[0].x_ort == 1.0
    meta = json.loads(files["json"].read_text())["meta"]
    assert meta["threads"] == 2 and "--matrix" in meta["commands"][0]
    md = files["md"].read_text()
    assert "| model | target | gate |" in md and f"| {MODEL} | openvino/fp32 | pass |" in md
    assert "\n1. `lightdeploy bench --matrix" in md  # the runs behind the table, one per line
    # a file from before the list: its runs were one string
    assert matrix_report.run_commands({"command": "lightdeploy a`, then `lightdeploy b"}) == [
        "lightdeploy a",
        "lightdeploy b",
    ]
    from PIL import Image

    with Image.open(files["png"]) as img:
        assert img.format == "PNG" and img.size == (440, 410)  # one model: one panel (matrix_plot)


def test_plot_has_a_panel_per_model_in_rows_of_four(tmp_path: Path):
    from PIL import Image

    from lightdeploy import matrix_plot

    cells = [
        matrix.MatrixCell(f"model{i}", t, p, "pass" if p != "int8" else "FAIL", "", err, median_ms=ms)
        for i in range(5)
        for t, p, err, ms in (("onnx", "fp32", 0.0, 10.0 * (i + 1)), ("tflite", "int8", 2e-2, 4.0 * (i + 1)))
    ]
    cells.append(matrix.MatrixCell("untimed", "onnx", "fp32", "error", "boom"))  # no point, no panel
    path = tmp_path / "m.png"
    matrix_plot.write_plot(cells, path)
    with Image.open(path) as img:  # 5 panels: 4 columns, 2 rows
        dpi = 100
        assert img.size == (round(4 * 4.4 * dpi), round((2 * 3.3 + 0.8) * dpi))


def test_failed_gate_is_timed_and_failed_export_is_a_row(tmp_path: Path, monkeypatch):
    # an impossible fp32 row for ONNX Runtime: the gate fails, the kept artifact is still timed
    row = tolerances.TABLE[("onnxruntime", "fp32")]
    monkeypatch.setitem(tolerances.TABLE, ("onnxruntime", "fp32"), dataclasses.replace(row, cosine_min=1.5))

    import lightdeploy.pipeline as pipeline

    real_export = pipeline.export

    def export(model, target, **kw):
        if target == "openvino":
            raise RuntimeError("converter exploded")
        return real_export(model, target, **kw)

    monkeypatch.setattr(pipeline, "export", export)
    cells = matrix.run_matrix(
        [MODEL], tmp_path, targets=(("onnx", "fp32"), ("openvino", "fp32")), runs=2, warmup=0, input_size=SIZE
    )
    failed, broken = cells
    assert failed.status == "FAIL" and "cosine" in failed.key and "limit >= 1.5" in failed.key
    assert failed.median_ms > 0 and failed.folder.endswith(".failed")
    assert broken.status == "error" and broken.key == "RuntimeError: converter exploded"
    assert broken.median_ms is None
    table = matrix_report.render_table(cells, 80)
    assert table.row_count == 2


def test_resume_keeps_finished_cells_and_runs_the_missing_ones(tmp_path: Path, monkeypatch):
    done = [
        matrix.MatrixCell(MODEL, "onnx", "fp32", "pass", "1-cos 0.0e+00", 0.0, 1.0, 1.0, 2, 1.0, 1.1),
        matrix.MatrixCell("snet49", "onnx", "fp32", "pass", "1-cos 0.0e+00", 0.0, 1.0, 1.0, 2, 1.0, 1.1),
    ]
    calls, saved = [], []

    import lightdeploy.pipeline as pipeline

    def export(model, target, **kw):
        calls.append((model, target, kw["precision"]))
        raise RuntimeError("not exported in this test")

    monkeypatch.setattr(pipeline, "export", export)
    targets = (("openvino", "int8"), ("onnx", "fp32"))
    cells = matrix.run_matrix(
        ["shufflenetv2_x0.5", MODEL], tmp_path, targets=targets, done=done, input_size=SIZE, checkpoint=saved.append
    )
    # the kept cell is not re-run; the missing ones are, in the order asked; the table is in registry
    # order, every model's rows in TARGETS order
    assert calls == [
        ("shufflenetv2_x0.5", "openvino", "int8"),
        ("shufflenetv2_x0.5", "onnx", "fp32"),
        (MODEL, "openvino", "int8"),
    ]
    assert [c.cell_id[:2] for c in cells] == [
        (MODEL, "onnx"),
        (MODEL, "openvino"),
        ("shufflenetv2_x0.5", "onnx"),
        ("shufflenetv2_x0.5", "openvino"),
        ("snet49", "onnx"),  # a model not asked for stays in the table
    ]
    assert cells[0] is done[0] and cells[-1] is done[1] and cells[1].status == "error"
    # on disk after each cell, and after the ratios the kept cell of MODEL lacked (its eager timing)
    assert [len(s) for s in saved] == [3, 4, 5, 5]
    assert cells[0].x_eager is not None and cells[0].x_ort == 1.0 and cells[-1].x_eager is None


def test_retime_times_again_only_the_cells_timed_on_a_shared_machine(tmp_path: Path, monkeypatch):
    import os

    import lightdeploy.runtimes.manifest as manifest_mod

    here = tmp_path / "artifact"
    here.mkdir()
    (here / "manifest.json").write_text("{}")
    busy = (os.cpu_count() or 1) + 1.0
    cell = functools.partial(matrix.MatrixCell, MODEL, status="pass", threads=2, x_eager=0.5)
    done = [
        cell(target="onnx", precision="fp32", median_ms=10.0, x_ort=1.0, load=busy, folder=str(here)),
        cell(target="openvino", precision="fp32", median_ms=5.0, x_ort=0.5, load=0.5, folder=str(here)),
        cell(target="tflite", precision="fp32", median_ms=8.0, x_ort=0.8, load=busy, folder=str(tmp_path / "gone")),
    ]
    timed, said = [], []

    def time_artifact(c, folder, manifest, threads, runs, warmup):
        timed.append(c.cell_id)
        c.median_ms, c.load = 4.0, 1.0

    monkeypatch.setattr(matrix, "_time_artifact", time_artifact)
    monkeypatch.setattr(manifest_mod, "read_manifest", lambda folder: {})
    kept = matrix.run_matrix(
        [MODEL], tmp_path, targets=(), done=done, input_size=SIZE, runs=2, warmup=0, retime=True, progress=said.append
    )
    onnx_cell, ov_cell, tflite_cell = kept
    assert timed == [(MODEL, "onnx", "fp32")]  # the quiet cell and the one whose folder is gone are not
    assert onnx_cell.median_ms == 4.0 and onnx_cell.x_eager != 0.5  # with its model's eager timed again
    assert ov_cell.median_ms == 5.0 and ov_cell.x_eager == 0.5 and ov_cell.x_ort == 5.0 / 4.0
    assert tflite_cell.median_ms == 8.0 and tflite_cell.x_ort == 8.0 / 4.0
    assert any("keeps its timing" in m and "gone" in m for m in said)
    r = run_cli("bench", "--matrix", MODEL, "--retime", cwd=tmp_path)
    assert r.returncode == 2 and "--resume" in r.stderr


def test_unknown_model_and_cell_are_usage_errors(tmp_path: Path):
    r = run_cli("bench", "--matrix", "mobilenet_v2", cwd=tmp_path)
    assert r.returncode == 2 and "mobilenetv2" in r.stderr  # the closest registered name is suggested
    r = run_cli("bench", "--matrix", MODEL, "--to", "tflite/int4", cwd=tmp_path)
    assert r.returncode == 2 and "tflite/int8" in r.stderr
    r = run_cli("bench", "--matrix", MODEL, "--resume", "--json", "none.json", cwd=tmp_path)
    assert r.returncode == 2 and "--resume" in r.stderr
    assert list(tmp_path.iterdir()) == []  # refused before any work


def test_resume_refuses_cells_timed_on_another_cpu(tmp_path: Path):
    """A table's latencies hold for one CPU: adding cells timed on another is refused, before any work,
    naming both; a table from before the CPU was recorded is resumed and says so."""
    from lightdeploy.artifact import cpu_summary

    earlier = tmp_path / "m.json"
    other = "Other CPU (avx2), 2 cores"
    matrix_report.write_json([], earlier, {"date": "2026-01-01", "commands": ["x"], "machine": "x86_64", "cpu": other})
    before = earlier.read_text()
    r = run_cli("bench", "--matrix", MODEL, "--resume", "--json", str(earlier), "--out", "a", cwd=tmp_path)
    assert r.returncode == 2 and other in r.stderr and cpu_summary() in r.stderr
    assert earlier.read_text() == before and not (tmp_path / "a").exists()

    meta = matrix_report.run_meta(2, 50, "lightdeploy bench --matrix")
    assert meta["cpu"] == cpu_summary() and cpu_summary() in meta["machine"]
    assert matrix_report.resumed_meta({**meta, "machine": "old"}, meta) == {**meta}
    unrecorded = matrix_report.resumed_meta({"machine": "x86_64, 2 cores, Linux"}, meta)
    assert "CPU is not recorded: x86_64, 2 cores, Linux" in unrecorded["machine"]


def test_host_facts_name_the_cpu_and_its_kernel_extensions():
    from lightdeploy.artifact import KERNEL_FEATURES, cpu_summary, host_facts

    facts = host_facts()
    assert set(facts["cpu_features"]) <= set(KERNEL_FEATURES) and facts["cpu"]
    flags = Path("/proc/cpuinfo").read_text().split() if Path("/proc/cpuinfo").exists() else []
    assert facts["cpu_features"] == [f for f in KERNEL_FEATURES if f in flags] or not flags
    assert cpu_summary(facts).endswith(f"{facts['cpu_count']} cores") and facts["cpu"] in cpu_summary(facts)


def test_key_figure_names_the_failed_check_or_the_worst_cosine():
    ok = {
        "checks": [{"passed": True, "subject": "logits", "metric": "cosine", "value": 0.99, "limit": 0.98, "op": ">="}],
        "outputs": {"logits": {"cosine": 0.9990}, "probs": {"cosine": 0.9995}},
        "task": {"top1_agreement": 0.97, "inputs": 120},
    }
    assert matrix.key_figure(ok) == "1-cos 1.0e-03, top1_agreement 0.970"
    bad = {**ok, "checks": [{**ok["checks"][0], "passed": False, "value": 0.9}]}
    assert matrix.key_figure(bad) == "logits cosine 0.9 (limit >= 0.98)"
    assert matrix.parity_error(ok) == pytest.approx(1e-3)


def test_default_models_are_every_registered_name_and_named_weights_but_aliases():
    from lightdeploy.models.registry import list_models

    names = matrix.default_models()
    assert "thundernet_snet49:synthetic" in names and "mobilenetv2:imagenet" in names
    assert set(list_models()) - set(names) == {"thundernet", "bisenet", "dfanet"}


def test_random_feed_fills_the_dynamic_dims_and_takes_a_batch():
    from lightdeploy.bench import random_feed

    manifest = {"inputs": [{"name": "images", "shape": ["batch", 3, "h", "w"]}], "preprocessing": {"size": [32, 48]}}
    (one,) = random_feed(manifest).values()
    assert one.shape == (1, 3, 32, 48) and one.dtype == np.float32
    assert np.array_equal(one, random_feed(manifest)["images"])  # the same feed in every run
    assert random_feed(manifest, 8)["images"].shape == (8, 3, 32, 48)
