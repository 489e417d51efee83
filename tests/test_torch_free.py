"""An edge device installs ``lightdeploy[<runtime>]`` into a fresh venv: no torch arrives, yet
``runtimes.load`` + ``predict`` and ``lightdeploy predict`` run an artifact exported elsewhere, and the
commands that need torch exit 3 naming the extra to install.

The venv is built with its own pip from the index pip is configured with here (no --no-deps), from
this checkout; it takes a few minutes, mostly downloads.  The install size is printed (pytest -s).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# extra -> (export target of the artifact it runs, marks)
EXTRAS = {
    "onnxruntime": ("onnx", []),
    "openvino-runtime": ("openvino", [pytest.mark.slow]),
    "tflite-runtime": ("tflite", [pytest.mark.slow]),
}


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=1200, **kw)


def size_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink()) / 2**20


@pytest.mark.xdist_group("cpu_artifacts")
@pytest.mark.parametrize("extra", [pytest.param(e, marks=m) for e, (_, m) in EXTRAS.items()])
def test_runtime_extra_installs_without_torch_and_predicts(extra, cpu_artifact, cat_image, tmp_path):
    from PIL import Image

    artifact = cpu_artifact("shufflenetv2_x0.5", EXTRAS[extra][0])
    image = tmp_path / "cat.png"
    Image.fromarray(cat_image).save(image)
    venv = tmp_path / "venv"
    r = run([sys.executable, "-m", "venv", str(venv)])
    assert r.returncode == 0, r.stderr
    python, pip = venv / "bin" / "python", venv / "bin" / "pip"
    empty = size_mb(venv)
    r = run([str(pip), "install", "--quiet", f"{ROOT}[{extra}]"])
    assert r.returncode == 0, r.stderr[-3000:]
    installed = size_mb(venv)
    print(f"\n{extra}: venv {installed:.0f} MB ({installed - empty:.0f} MB over an empty venv)")

    r = run([str(python), "-c", "import torch"])
    assert r.returncode != 0 and "No module named 'torch'" in r.stderr
    code = (
        "import sys\n"
        "from lightdeploy import runtimes\n"
        "with runtimes.load(sys.argv[1]) as model:\n"
        "    top = model.predict(sys.argv[2])\n"
        "    print(len(top), model.info['backend'], model.info['verdict'])\n"
        "print('torch' in sys.modules)\n"
    )
    r = run([str(python), "-c", code, str(artifact), str(image)], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split("\n")[:2] == [f"5 {extract_backend(artifact)} parity passed", "False"]

    cli = str(venv / "bin" / "lightdeploy")
    r = run([cli, "predict", str(artifact), str(image), "--out", str(tmp_path / "pred")])
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "pred" / f"cat-{artifact.name}.png").is_file()
    r = run([cli, "export", "shufflenetv2_x0.5", "--to", "onnx", "--out", str(tmp_path / "o")])
    assert r.returncode == 3 and "lightdeploy[export" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists()


def extract_backend(artifact: Path) -> str:
    import json

    return json.loads((artifact / "manifest.json").read_text())["backend"]
