"""bench/independent.py: parsing the output of OpenVINO's benchmark_app and LiteRT's litert-benchmark
(captured from real runs: openvino 2026.4.1, ai-edge-litert 2.3.0), the commands it builds, and its exit
on a missing tool.  No timing here: speed is measured by the script itself."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest
from conftest import ROOT

spec = importlib.util.spec_from_file_location("bench_independent", ROOT / "bench" / "independent.py")
independent = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = independent  # its dataclasses look their module up there
spec.loader.exec_module(independent)

# benchmark_app -m model.xml -d CPU -hint none -nstreams 1 -nthreads 2 -api sync -niter 20 -infer_precision f32
BENCHMARK_APP = """\
[Step 9/11] Creating infer requests and preparing input tensors
[ WARNING ] No input files were given for input 'image'!. This input will be filled with random values!
[ INFO ] Fill input 'image' with random values
[Step 10/11] Measuring performance (Start inference synchronously, limits: 20 iterations)
[ INFO ] Benchmarking in inference only mode (inputs filling are not included in measurement loop).
[ INFO ] First inference took 70.52 ms
[Step 11/11] Dumping statistics report
[ INFO ] Execution Devices:['CPU']
[ INFO ] Count:            20 iterations
[ INFO ] Duration:         1071.35 ms
[ INFO ] Latency:
[ INFO ]    Median:        51.86 ms
[ INFO ]    Average:       53.43 ms
[ INFO ]    Min:           46.59 ms
[ INFO ]    Max:           63.08 ms
[ INFO ] Throughput:   18.67 FPS
"""

# litert-benchmark --model model.tflite --num_threads 2 --num_runs 20 --warmup_runs 3 (stdout)
LITERT = """
========================================
 BENCHMARK RESULTS
========================================
Model initialization:  28.83 ms
Warmup (first):        22.13 ms
Warmup (avg):          11.44 ms (3 runs)
Inference (avg):       5.79 ms (20 runs)
Inference (min):       4.49 ms
Inference (max):       6.81 ms
Inference (median):    5.94 ms
Inference (std):       0.64 ms
Inference (p5):        4.77 ms
Inference (p95):       6.69 ms
Throughput:            99.25 MB/s
Fully accelerated:     False
========================================
"""


def test_parse_benchmark_app():
    assert independent.parse_benchmark_app(BENCHMARK_APP) == {
        "median": 51.86,
        "average": 53.43,
        "min": 46.59,
        "max": 63.08,
        "count": 20,
    }


def test_parse_litert_benchmark():
    stats = independent.parse_litert_benchmark(LITERT)
    assert stats == {"median": 5.94, "average": 5.79, "min": 4.49, "max": 6.81, "p95": 6.69, "count": 20}


def test_benchmark_app_first_inference_is_not_the_median():
    # "First inference took 70.52 ms" and "Duration" are ms figures too; only the latency block counts
    assert independent.parse_benchmark_app(BENCHMARK_APP)["median"] != 70.52


@pytest.mark.parametrize(
    "parse, text, missing",
    [
        (independent.parse_benchmark_app, BENCHMARK_APP.replace("   Median:        51.86 ms\n", ""), "Median"),
        (independent.parse_benchmark_app, BENCHMARK_APP.split("[Step 11/11]")[0], "Median"),
        (independent.parse_benchmark_app, BENCHMARK_APP.replace("51.86 ms", "n/a ms"), "Median"),
        (independent.parse_litert_benchmark, LITERT.replace("Inference (median):    5.94 ms\n", ""), "median"),
        (independent.parse_litert_benchmark, "", "median"),
    ],
)
def test_malformed_output_raises_naming_the_figure(parse, text, missing):
    with pytest.raises(independent.ToolOutputError, match=rf"no .*{missing}"):
        parse(text)


def _manifest(shape):
    return {"inputs": [{"name": "image", "shape": shape}], "preprocessing": {"size": [224, 224]}}


def test_benchmark_app_command_matches_the_wrapper_settings():
    cmd = independent.benchmark_app_command(
        ["benchmark_app"], "m.xml", _manifest([1, 3, 224, 224]), [1, 3, 224, 224], 2, 50
    )
    text = " ".join(cmd)
    for flag in (
        "-hint none",
        "-nstreams 1",
        "-nthreads 2",
        "-api sync",
        "-niter 50",
        "-infer_precision f32",
        "-ip f32",
    ):
        assert flag in text
    assert "-data_shape" not in cmd


def test_benchmark_app_command_dynamic_batch_feeds_batch_1():
    cmd = independent.benchmark_app_command(
        ["benchmark_app"], "m.xml", _manifest(["batch", 3, 224, 224]), [1, 3, 224, 224], 2, 50
    )
    assert cmd[cmd.index("-data_shape") + 1] == "image[1,3,224,224]"


def test_missing_tool_exits_1_naming_the_extra(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "m-openvino-fp32"
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps({"schema_version": 1, "backend": "openvino"}))
    monkeypatch.setattr(independent, "find_tool", lambda name: None)
    assert independent.main([str(folder)]) == 1
    err = capsys.readouterr().err
    assert "benchmark_app" in err and "lightdeploy[openvino-runtime]" in err
