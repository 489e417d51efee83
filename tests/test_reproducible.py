"""Exporting the same model twice gives byte-identical model files and manifests; the manifest holds
no path of the exporting machine; weights are recorded by name and sha256 and found again by parity.

Each export runs in a fresh process (the CLI), so nothing cached in one process (calibrated BN
statistics, converted graphs) can make two exports agree that would not agree on two machines.
Only ``export_log.json`` (timings, host facts; unhashed) may differ.
"""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import run_cli

from lightdeploy.runtimes.manifest import EXPORT_LOG

MODEL, SIZE = "shufflenetv2_x0.5", ("64", "64")


def export_twice(tmp_path, *targets: str) -> tuple:
    outs = []
    for run in ("first", "second"):
        out = tmp_path / run
        args = ["export", MODEL, *[a for t in targets for a in ("--to", t)], "--input-size", *SIZE, "--out", str(out)]
        r = run_cli(*args, "--quiet")
        assert r.returncode == 0, r.stderr[-2000:]
        outs.append(out)
    return tuple(outs)


def files_of(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def assert_identical(first, second, tmp_path) -> None:
    assert sorted(p.name for p in first.iterdir()) == sorted(p.name for p in second.iterdir())
    for folder in sorted(first.iterdir()):
        a, b = files_of(folder), files_of(second / folder.name)
        assert EXPORT_LOG in a and EXPORT_LOG not in json.loads(a["manifest.json"])["files"]
        a.pop(EXPORT_LOG), b.pop(EXPORT_LOG)
        differ = sorted(name for name in a if a[name] != b[name])
        assert not differ, f"{folder.name}: {differ} differ between two exports"
        text = a["manifest.json"].decode()
        assert str(tmp_path) not in text, "the manifest carries a path of the exporting machine"


def test_onnx_and_openvino_exports_are_byte_identical(tmp_path):
    first, second = export_twice(tmp_path, "onnx", "openvino")
    assert_identical(first, second, tmp_path)
    log = json.loads((first / f"{MODEL}-openvino-fp32" / EXPORT_LOG).read_text())
    assert {"model", "export", "parity", "total"} <= set(log["seconds"]) and "convert_seconds" in log["exporter"]
    assert log["host"]["cpu_count"] and str(tmp_path) not in json.dumps(log)


@pytest.mark.slow  # two litert-torch conversions
def test_tflite_exports_are_byte_identical(tmp_path):
    first, second = export_twice(tmp_path, "tflite")
    assert_identical(first, second, tmp_path)


def test_weights_are_recorded_by_name_and_found_by_parity(tmp_path, monkeypatch):
    import torch

    from lightdeploy import create_model
    from lightdeploy.errors import UsageError
    from lightdeploy.pipeline import export, parity
    from lightdeploy.runtimes.manifest import sha256

    weights = tmp_path / "mine" / "w.pt"
    weights.parent.mkdir()
    torch.save(create_model(MODEL, input_size=(64, 64)).state_dict(), weights)
    out = tmp_path / "out"
    art = export(MODEL, "onnx", input_size=(64, 64), weights=weights, out=out).folder
    manifest = json.loads((art / "manifest.json").read_text())
    assert manifest["source"]["weights"] == {"file": "w.pt", "sha256": sha256(weights)}
    assert str(tmp_path) not in (art / "manifest.json").read_text()

    monkeypatch.chdir(tmp_path)  # the file is neither beside the artifact nor in the current folder
    with pytest.raises(UsageError, match=r"weights w\.pt .* Give the file with --weights FILE"):
        parity(art)
    other = tmp_path / "other.pt"
    torch.save(create_model(MODEL, input_size=(64, 64), calibrate_bn=False, seed=1).state_dict(), other)
    with pytest.raises(UsageError, match="Refused weights .* sha256"):
        parity(art, weights=other)
    assert parity(art, weights=weights).passed
    shutil.copyfile(weights, out / "w.pt")  # beside the artifact: found by its recorded name
    assert parity(art).passed
    r = run_cli("parity", str(art), "--weights", str(other), "--quiet")  # the CLI: exit 2, no traceback
    assert r.returncode == 2 and "Refused weights" in r.stderr and "Traceback" not in r.stderr
