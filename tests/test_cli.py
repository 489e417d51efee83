"""The command line: each case of the error catalogue gets its message, exit code and no partial output."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
import textwrap
from types import SimpleNamespace

from conftest import run_cli


def _no_artifacts(out):
    return not out.exists() or list(out.iterdir()) == []


def test_list_and_info():
    r = run_cli("list", "--json")
    assert r.returncode == 0, r.stderr
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    assert rows["mobilenetv2"]["macs"] == 300_774_272 or abs(rows["mobilenetv2"]["macs"] / 300.8e6 - 1) < 0.01
    r = run_cli("info", "snet146")
    assert r.returncode == 0 and "reference MACs" in r.stdout


def test_unknown_model_suggests(tmp_path):
    r = run_cli("export", "shufflenet_v2", "--to", "onnx", "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "Did you mean" in r.stderr and "shufflenetv2" in r.stderr
    assert _no_artifacts(tmp_path / "o")


def test_unknown_target_lists_available(tmp_path):
    r = run_cli("export", "snet49", "--to", "coreml", "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "Available targets: onnx" in r.stderr
    assert _no_artifacts(tmp_path / "o")


def test_size_not_divisible(tmp_path):
    r = run_cli("export", "snet49", "--to", "onnx", "--input-size", "100", "100", "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "multiples of its stride 32" in r.stderr
    assert _no_artifacts(tmp_path / "o")


def test_weights_missing_and_pickled_code(tmp_path):
    r = run_cli(
        "export", "snet49", "--to", "onnx", "--weights", str(tmp_path / "none.pth"), "--out", str(tmp_path / "o")
    )
    assert r.returncode == 2 and "does not exist" in r.stderr
    evil = tmp_path / "evil.pth"
    evil.write_bytes(
        b"\x80\x04\x95\x1a\x00\x00\x00\x00\x00\x00\x00\x8c\x02os\x94\x8c\x06system\x94\x93\x94\x8c\x02id\x94\x85\x94R\x94."
    )
    r = run_cli("export", "snet49", "--to", "onnx", "--weights", str(evil), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "Refused to load" in r.stderr
    assert _no_artifacts(tmp_path / "o")


def test_output_dir_not_writable(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    r = run_cli("export", "snet49", "--to", "onnx", "--out", str(blocker / "sub"))
    assert r.returncode == 2 and "not writable" in r.stderr


def test_missing_optional_package(tmp_path):
    r = run_cli(
        "export",
        "snet49",
        "--to",
        "onnx",
        "--input-size",
        "64",
        "64",
        "--out",
        str(tmp_path / "o"),
        prelude="import sys; sys.modules['onnxscript'] = None",
    )
    assert r.returncode == 3 and "pip install 'lightdeploy[onnx]'" in r.stderr
    assert _no_artifacts(tmp_path / "o")


def test_fp16_and_int8_exclusive(tmp_path):
    r = run_cli("export", "snet49", "--to", "onnx", "--fp16", "--int8", "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "exclude each other" in r.stderr


def test_tampered_artifact(classifier_artifact, tmp_path):
    copy = tmp_path / "a"
    shutil.copytree(classifier_artifact, copy)
    (copy / "model.onnx").write_bytes(b"garbage")
    for cmd in (("parity", str(copy)), ("info", str(copy)), ("predict", str(copy), "x.png")):
        r = run_cli(*cmd)
        assert r.returncode == 2 and "modified or corrupted" in r.stderr, cmd


def test_parity_failure_exits_1_and_keeps_artifact(classifier_artifact, tmp_path):
    import onnx
    from onnx import numpy_helper

    from lightdeploy.artifact import write_manifest

    copy = tmp_path / "a"
    shutil.copytree(classifier_artifact, copy)
    model = onnx.load(str(copy / "model.onnx"))
    init = next(i for i in model.graph.initializer if numpy_helper.to_array(i).ndim == 4)
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 1.05, init.name))
    onnx.save(model, str(copy / "model.onnx"))
    manifest = json.loads((copy / "manifest.json").read_text())
    write_manifest(copy, {k: v for k, v in manifest.items() if k != "files"})
    r = run_cli("parity", str(copy), "--quiet", "--junit", str(tmp_path / "j.xml"))
    assert r.returncode == 1 and "parity FAILED" in r.stdout
    assert (tmp_path / "j.xml").exists()


def test_export_predict_bench_end_to_end(tmp_path, cat_image):
    from PIL import Image

    out = tmp_path / "o"
    r = run_cli("export", "snet49", "--to", "onnx", "--input-size", "64", "64", "--out", str(out))
    assert r.returncode == 0, r.stderr
    art = out / "snet49-onnx-fp32"
    assert "parity PASSED" in r.stdout
    assert sorted(p.name for p in art.iterdir()) == ["export_log.json", "manifest.json", "model.onnx"]
    assert [p.name for p in out.iterdir()] == ["snet49-onnx-fp32"]  # no temporary folders left
    img = tmp_path / "cat.jpg"
    Image.fromarray(cat_image).save(img)
    r = run_cli("predict", str(art), str(img), "--out", str(tmp_path / "pred"))
    assert r.returncode == 0, r.stderr
    png = tmp_path / "pred" / "cat-snet49-onnx-fp32.png"
    assert Image.open(png).size[1] > 64
    r = run_cli(
        "bench",
        str(art),
        "--runs",
        "3",
        "--warmup",
        "1",
        "--json",
        str(tmp_path / "b.json"),
        "--plot",
        str(tmp_path / "b.png"),
    )
    assert r.returncode == 0, r.stderr
    rows = json.loads((tmp_path / "b.json").read_text())
    assert [row["runtime"] for row in rows] == ["eager", "onnxruntime/fp32"] and rows[1]["ratio_to_eager"] > 0
    assert (tmp_path / "b.png").exists()


def test_named_weights_are_models_not_factories(tmp_path):
    """`MODEL:TAG` (named weights) has a colon like `pkg.module:factory`; the registry decides first, so
    the demo's `lightdeploy export mobilenetv2:imagenet` exports, and the manifest records the weights."""
    out = tmp_path / "o"
    r = run_cli("export", "bisenet_xception39:synthetic", "--to", "onnx", "--input-size", "64", "64", "--out", str(out))
    assert r.returncode == 0, r.stderr
    manifest = json.loads((out / "bisenet_xception39-synthetic-onnx-fp32" / "manifest.json").read_text())
    assert manifest["source"]["weights"]["named"] == "bisenet_xception39:synthetic" and manifest["parity"]["passed"]
    r = run_cli("export", "bisenet_xception39:nosuchtag", "--to", "onnx", "--out", str(out))
    assert r.returncode == 2 and "bisenet_xception39:synthetic" in r.stderr  # not found, with the closest name


def test_target_aliases_resolve_to_the_canonical_name():
    import pytest

    from lightdeploy.errors import UsageError
    from lightdeploy.exporters import resolve_target

    typed = {"tensorrt": "trt", "engine": "trt", "ov": "openvino", "litert": "tflite", "ort": "onnx"}
    typed |= {"onnxruntime": "onnx", "OpenVINO": "openvino", "trt": "trt"}
    assert {name: resolve_target(name) for name in typed} == typed
    with pytest.raises(UsageError, match=r"Available targets: onnx, openvino, tflite, trt \(aliases: .*ov = openvino"):
        resolve_target("coreml")


def test_export_to_an_alias_writes_the_canonical_folder(tmp_path):
    out = tmp_path / "o"
    r = run_cli("export", "snet49", "--to", "ov", "--input-size", "64", "64", "--no-parity", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert [p.name for p in out.iterdir()] == ["snet49-openvino-fp32"]
    assert "[building snet49 took" in r.stderr and "[exporting to openvino (fp32) took" in r.stderr
    manifest = json.loads((out / "snet49-openvino-fp32" / "manifest.json").read_text())
    assert manifest["target"] == "openvino"
    r = run_cli("check", "snet49", "--to", "onnxruntime")  # aliases resolve before check's own target list
    assert r.returncode == 2 and "checks exist for: trt, openvino, tflite" in r.stderr


def test_verbose_reaches_the_converters_switch(monkeypatch):
    """`lightdeploy --verbose CMD` sets LIGHTDEPLOY_VERBOSE, which `logs.quiet()` reads; without it, the CLI
    (not the library's import) quiets TensorFlow's C++ logging, unless the user set it."""
    from typer.testing import CliRunner

    from lightdeploy.cli import app
    from lightdeploy.logs import VERBOSE_ENV, verbose

    monkeypatch.delenv(VERBOSE_ENV, raising=False)
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    r = CliRunner().invoke(app, ["info", "snet49"])
    assert r.exit_code == 0, r.output
    assert not verbose() and os.environ["TF_CPP_MIN_LOG_LEVEL"] == "2"
    r = CliRunner().invoke(app, ["--verbose", "info", "snet49"])
    assert r.exit_code == 0, r.output
    assert verbose()


def test_native_stderr_is_quiet_unless_the_block_fails_or_verbose():
    """What native code writes to fd 2 (litert-torch's absl INFO lines at import) is hidden; if the block
    raises it is replayed, and ``LIGHTDEPLOY_VERBOSE`` shows it as it comes."""
    script = textwrap.dedent(
        """
        import os
        from lightdeploy.logs import quiet_native_stderr
        with quiet_native_stderr():
            os.write(2, b"native-hidden\\n")
        try:
            with quiet_native_stderr():
                os.write(2, b"native-replayed\\n")
                raise RuntimeError("boom")
        except RuntimeError:
            pass
        os.write(2, b"after\\n")
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "LIGHTDEPLOY_VERBOSE"}
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    assert r.stderr.split() == ["native-replayed", "after"]
    r = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env={**env, "LIGHTDEPLOY_VERBOSE": "1"}
    )
    assert r.stderr.split() == ["native-hidden", "native-replayed", "after"]


def test_progress_lines_time_the_previous_stage(capsys, monkeypatch):
    from lightdeploy.cli import common

    clock = itertools.chain([10.0, 13.24, 14.0, 20.5], itertools.count())
    monkeypatch.setattr(common, "time", SimpleNamespace(perf_counter=lambda: next(clock)))  # this module's only
    progress = common.Progress()
    progress("building [snet49]")  # brackets in a message are text, not rich markup
    progress("exporting")
    progress.done()
    progress.done()  # nothing open: no line
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "… building [snet49]",
        "… exporting   [building [snet49] took 3.2 s]",
        "… done   [exporting took 6.5 s]",
    ]
    quiet = common.Progress(quiet=True)
    quiet("building")
    quiet.done()
    assert capsys.readouterr().err == ""


def test_progress_counts_redraw_on_a_terminal_and_close_the_stage_in_a_log(capsys, monkeypatch):
    from lightdeploy.cli import common

    clock = itertools.count(step=1.0)
    monkeypatch.setattr(common, "time", SimpleNamespace(perf_counter=lambda: float(next(clock))))
    for terminal in (False, True):
        monkeypatch.setattr(type(common.err), "is_terminal", property(lambda self, t=terminal: t))
        progress = common.Progress()
        progress("running the parity gate")
        for i in range(1, 4):
            progress.count(i, 3, "runs")
        progress.done()
        out = capsys.readouterr().err
        assert out.splitlines()[-1].endswith("[running the parity gate took 4.0 s, 3 runs]")
        # in a log, no count line; on a terminal each count is drawn over the last, then erased
        assert out.count("3/3 runs") == terminal and out.count("\r") == 4 * terminal


def test_progress_counts_without_a_known_total(capsys, monkeypatch):
    """NNCF's accuracy control does not say in advance how many evaluations it runs: the count alone."""
    from lightdeploy.cli import common

    monkeypatch.setattr(type(common.err), "is_terminal", property(lambda self: True))
    progress = common.Progress()
    progress("exporting to openvino (int8)")
    progress.count(7, 0, "accuracy-control evaluations")
    assert "… exporting to openvino (int8)  7 accuracy-control evaluations" in capsys.readouterr().err


def test_bench_table_fits_80_columns():
    from rich.console import Console

    from lightdeploy.bench import BenchRow, render_table

    name = "mobilenetv2_x0.35-openvino-fp16"
    rows = [
        BenchRow("mobilenetv2_x0.35", "mobilenetv2_x0.35", "eager", [1, 3, 224, 224], 2, 50, 3.21, 3.5, 1.0),
        BenchRow(name, "mobilenetv2_x0.35", "openvino/fp16", [1, 3, 224, 224], 2, 50, 123.21, 130.5, 0.38),
    ]
    for row in rows:
        row.cpu = "AMD EPYC (avx2 avx512f avx512_vnni avx512_bf16), 2 cores"
    console = Console(width=80, record=True)
    console.print(render_table(rows, console.width))
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80 and name in text and "openvino/fp16" in text
    assert "on AMD EPYC (avx2 avx512f avx512_vnni avx512_bf16), 2 cores" in text  # the CPU it holds for


def test_bench_rounds_take_every_subject_in_turn():
    """--rounds: all subjects open at once, warmed up, then each round times every subject in turn, so a
    drifting host slows them alike; one round is the sequential run, one subject at a time."""
    import contextlib

    from lightdeploy import bench

    def subjects(order: list[str]):
        def opened(tag):
            @contextlib.contextmanager
            def calls():
                order.append(f"open {tag}")
                yield lambda: order.append(tag)
                order.append(f"close {tag}")

            return calls

        return [bench._Timed(bench.BenchRow(t, t, "x", [1], 1, 5, 0.0, 0.0), opened(t), ()) for t in "ab"]

    order: list[str] = []
    bench._sample_all(subjects(order), runs=5, warmup=1, rounds=2, progress=lambda msg: None)
    assert order == ["open a", "open b", "a", "b", *"aaabbbaabb", "close b", "close a"]
    order.clear()
    bench._sample_all(subjects(order), runs=5, warmup=1, rounds=1, progress=lambda msg: None)
    assert order == ["open a", *"a" * 6, "close a", "open b", *"b" * 6, "close b"]
    r = run_cli("bench", "mobilenetv2_x0.35", "--runs", "2", "--rounds", "3")
    assert r.returncode == 2 and "rounds must be between 1 and the runs (2)" in r.stderr


def test_a_killed_export_leaves_no_staging_folder(tmp_path):
    """`kill` (SIGTERM) in the middle of an export unwinds like Ctrl-C: exit 143, and the hidden staging
    folder beside the artifacts is removed."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "o"
    argv = ["lightdeploy", "export", "shufflenetv2_x0.5", "--to", "onnx", "--input-size", "64", "64", "--out", str(out)]
    code = f"import sys\nfrom lightdeploy.cli import main\nsys.argv = {argv!r}\nmain()"
    log = tmp_path / "stderr.txt"
    with open(log, "wb") as stderr:
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=stderr)
        deadline = time.monotonic() + 300
        while not list(out.glob(".*.tmp-*")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None, "the export ended before it could be stopped"
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=300)
    assert code == 143, log.read_text(errors="replace")[-3000:]
    assert list(out.iterdir()) == []
