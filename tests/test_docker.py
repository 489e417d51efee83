"""The Dockerfiles agree with pyproject (extras, pins) and each image checks itself when built.

No Docker engine runs here, so the images are not built; these tests read the files.  What they
prove: every `pip install .[extra]` names an extra pyproject defines, the export images install torch
at pyproject's pin (from the CPU wheel index), the runtime-only TFLite image installs the
`tflite-runtime` extra (no --no-deps anywhere) whose requirements, followed through pyproject's own
extras, hold no torch, every COPY source exists, and every image runs `lightdeploy --help` at build.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
IMAGES = {"tensorrt": "trt", "openvino": "openvino", "tflite": "tflite-runtime"}  # Dockerfile -> extra
RUNTIME_ONLY = {"tflite"}  # images that run artifacts and never export: no torch
EXPORT_IMAGES = sorted(set(IMAGES) - RUNTIME_ONLY)


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def pins() -> dict[str, str]:
    """{package: '==version'} of every pinned requirement in pyproject (core and extras)."""
    project = pyproject()["project"]
    reqs = list(project["dependencies"]) + [r for extra in project["optional-dependencies"].values() for r in extra]
    out = {}
    for req in reqs:
        m = re.match(r"^([A-Za-z0-9_.\-]+)==([^;\s]+)$", req.strip())
        if m:
            out[m.group(1).lower()] = m.group(2)
    return out


def instructions(name: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = (DOCKER / f"{name}.Dockerfile").read_text()
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    out = []
    for line in joined.splitlines():
        if line.strip():
            head, _, rest = line.strip().partition(" ")
            out.append((head.upper(), rest.strip()))
    return out


def pip_installs(name: str) -> list[list[str]]:
    """The argument lists of every `pip install` in RUN instructions."""
    out = []
    for head, rest in instructions(name):
        if head != "RUN":
            continue
        commands, current = [], []
        for word in shlex.split(rest):
            if word in ("&&", ";", "||"):
                commands.append(current)
                current = []
            else:
                current.append(word)
        for words in commands + [current]:
            for i in range(len(words) - 1):
                if words[i] == "pip" and words[i + 1] == "install":
                    out.append(words[i + 2 :])
                    break
    return out


def requirement_names(args: list[str]) -> list[str]:
    return [a for a in args if not a.startswith("-") and not a.startswith("http")]


def extra_requirements(extra: str) -> set[str]:
    """The distribution names an extra installs: lightdeploy's core dependencies plus the extra's,
    following lightdeploy's own extras (``lightdeploy[a,b]``) through pyproject."""
    project = pyproject()["project"]
    names, todo, seen = set(), [extra], set()
    for req in project["dependencies"]:
        names.add(re.split(r"[=<>\[;\s]", req)[0].lower())
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        for req in project["optional-dependencies"][current]:
            m = re.match(r"^lightdeploy\[([a-z0-9,\-]+)\]$", req)
            if m:
                todo += m.group(1).split(",")
            else:
                names.add(re.split(r"[=<>\[;\s]", req)[0].lower())
    return names


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_dockerfile_exists_with_a_base_image(name):
    inst = instructions(name)
    assert any(head == "FROM" for head, _ in inst), f"{name}.Dockerfile has no FROM"


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_copy_sources_exist(name):
    for head, rest in instructions(name):
        if head == "COPY":
            *sources, _dest = rest.split()
            for src in sources:
                if "*" in src:
                    continue  # optional (README.md*), matched when present
                assert (ROOT / src).exists(), f"{name}.Dockerfile copies {src}, which is not in the repository"


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_installs_an_extra_pyproject_defines(name):
    extras = pyproject()["project"]["optional-dependencies"]
    installed = []
    for args in pip_installs(name):
        for req in requirement_names(args):
            m = re.match(r"^(?:\.|lightdeploy)\[([a-z0-9,\-]+)\]$", req)
            if m:
                installed += m.group(1).split(",")
    assert installed, f"{name}.Dockerfile installs no lightdeploy extra"
    for extra in installed:
        assert extra in extras, f"{name}.Dockerfile installs extra {extra!r}; pyproject defines {sorted(extras)}"
    assert IMAGES[name] in installed


@pytest.mark.parametrize("name", EXPORT_IMAGES)
def test_torch_at_the_pyproject_pin_from_the_cpu_index(name):
    torch_pin = pins()["torch"]
    torch_installs = [
        args for args in pip_installs(name) if any(r.startswith("torch") for r in requirement_names(args))
    ]
    assert torch_installs, f"{name}.Dockerfile does not install torch explicitly (PyPI's Linux wheel is the CUDA build)"
    for args in torch_installs:
        assert f"torch=={torch_pin}" in args, f"{name}.Dockerfile installs torch unpinned or at another version"
        assert "https://download.pytorch.org/whl/cpu" in args


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_image_runs_the_cli_at_build(name):
    runs = " ".join(rest for head, rest in instructions(name) if head == "RUN")
    assert "lightdeploy --help" in runs
    assert any(head == "ENTRYPOINT" and "lightdeploy" in rest for head, rest in instructions(name))


def test_tensorrt_image_uses_nvidia_base_and_index():
    inst = instructions("tensorrt")
    args = " ".join(rest for head, rest in inst if head in ("ARG", "FROM"))
    assert "nvcr.io/nvidia/tensorrt" in args
    assert {"tensorrt", "cuda-python", "torch"} <= extra_requirements("trt")
    assert any("https://pypi.nvidia.com" in args for args in map(" ".join, pip_installs("tensorrt")))


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_no_image_installs_with_no_deps(name):
    """Every dependency comes from pyproject's extras, so `pip check` can vouch for the image."""
    assert not any("--no-deps" in args for args in pip_installs(name)), f"{name}.Dockerfile uses --no-deps"


def test_tflite_image_is_runtime_only():
    installs = pip_installs("tflite")
    requirements = [r for args in installs for r in requirement_names(args)]
    assert requirements == [".[tflite-runtime]"], f"the runtime image installs {requirements}"
    runs = " ".join(rest for head, rest in instructions("tflite") if head == "RUN")
    assert "import lightdeploy.runtimes" in runs and "find_spec('torch') is not None" in runs and "pip check" in runs


@pytest.mark.parametrize("extra", ["onnxruntime", "openvino-runtime", "tflite-runtime", "tensorrt-runtime"])
def test_runtime_extras_hold_no_torch(extra):
    names = extra_requirements(extra)
    assert not names & {"torch", "torchvision", "scikit-image", "onnx", "nncf", "litert-torch"}, sorted(names)
    assert {"numpy", "pillow", "typer"} <= names


def test_export_extras_hold_torch_at_its_pin():
    for extra in ("export", "onnx", "openvino", "tflite", "trt", "cpu", "all"):
        assert "torch" in extra_requirements(extra), extra
    assert "torch==" + pins()["torch"] in pyproject()["project"]["optional-dependencies"]["export"]


def test_runtime_only_import_works_without_torch():
    """What the TFLite image runs at build: lightdeploy.runtimes imports with torch and tensorflow blocked."""
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'tensorflow', 'onnx', 'onnxruntime', 'openvino'):\n"
        "            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import lightdeploy.runtimes, lightdeploy.runtimes.tensorrt\n"
        "assert 'torch' not in sys.modules\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr
