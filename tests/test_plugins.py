"""Model families from other packages: the ``lightdeploy.models`` entry-point group.

One test installs a real plugin package into a fresh virtual environment (offline: the plugin is a
wheel written here, installed by that environment's pip with --no-index; lightdeploy and torch come
from this interpreter's site-packages through a .pth file) and finds its model in ``lightdeploy
list``, in the CLI and in the tests parametrised over the registry.  The others load entry points
in this process.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import json
import site
import subprocess
import sys
import zipfile

import pytest
from conftest import ROOT

from lightdeploy.errors import MissingDependencyError
from lightdeploy.models import registry

PLUGIN_MODULE = '''
"""A plugin's model family: importing this module registers it."""
from torch import nn

from lightdeploy.models.registry import ModelSpec, register_model


def build(num_classes=10):
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes),
    )


register_model(ModelSpec("tinyplug_net", "tinyplug", "classify", build, (32, 32), 2, 10, ("logits",),
                         description="a plugin's classifier"))
'''


def _wheel(folder, name="tinyplug", version="1.0") -> str:
    """A pure-Python wheel holding ``name``/models.py and its ``lightdeploy.models`` entry point."""
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": "",
        f"{name}/models.py": PLUGIN_MODULE,
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: lightdeploy-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        f"{dist}/entry_points.txt": f"[lightdeploy.models]\n{name} = {name}.models\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    files[f"{dist}/RECORD"] = "\n".join([*record, f"{dist}/RECORD,,"]) + "\n"
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, text in files.items():
            zf.writestr(path, text)
    return str(wheel)


def test_a_plugin_installed_in_a_venv_shows_up_everywhere(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    # This interpreter's packages, in its order: its own site-packages as a site dir (their .pth files
    # run, so the editable lightdeploy resolves), others (added by .pth files there) as plain paths.
    own = site.getsitepackages()
    others = [p for p in sys.path if p.endswith("site-packages") and p not in own]
    lines = [f"import site; site.addsitedir({p!r})" for p in own] + others
    (tmp_path / "venv" / purelib.split(str(venv) + "/", 1)[1] / "zz_lightdeploy_host.pth").write_text(
        "\n".join(lines) + "\n"
    )
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--no-deps", "--no-index", _wheel(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert install.returncode == 0, install.stdout + install.stderr

    def run(*args, cwd=ROOT):
        return subprocess.run([str(python), *args], capture_output=True, text=True, cwd=cwd, timeout=900)

    listed = run("-m", "lightdeploy.cli", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = {row["name"]: row for row in json.loads(listed.stdout)}
    assert rows["tinyplug_net"]["task"] == "classify" and rows["tinyplug_net"]["params"] == (8 * 27 + 8) + 2 * 8 + (
        8 * 10 + 10
    )
    assert list(rows)[-1] == "tinyplug_net"  # after the zoo's families
    exported = run("-m", "lightdeploy.cli", "export", "tinyplug_net", "--to", "onnx", "--out", str(tmp_path / "a"))
    assert exported.returncode == 0 and "parity PASSED" in exported.stdout, exported.stderr
    collected = run("-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "tests/test_registry.py")
    assert "test_forward_shapes[tinyplug_net]" in collected.stdout, collected.stdout[-2000:] + collected.stderr


@pytest.fixture
def fresh_registry(monkeypatch):
    """The registry as if its plugins were never loaded (the zoo's families stay), restored afterwards."""
    registry.list_models()
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_families_loaded", False)


def _entry_points(monkeypatch, tmp_path, modules: dict[str, str], values: dict[str, str]):
    for name, code in modules.items():
        (tmp_path / f"{name}.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    points = [importlib.metadata.EntryPoint(n, v, registry.PLUGIN_GROUP) for n, v in values.items()]
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group=None: [p for p in points if p.group == group])


def test_entry_points_register_by_import_or_by_call(fresh_registry, monkeypatch, tmp_path):
    by_call = PLUGIN_MODULE.replace("\nregister_model(", "\ndef register():\n    register_model(").replace(
        '"tinyplug_net"', '"called_net"'
    )
    _entry_points(
        monkeypatch,
        tmp_path,
        {"plug_by_import": PLUGIN_MODULE, "plug_by_call": by_call},
        {"a": "plug_by_import", "b": "plug_by_call:register"},
    )
    names = registry.list_models()
    assert names[-2:] == ["tinyplug_net", "called_net"] and "snet49" in names
    assert registry.get_spec("called_net").task == "classify"


def test_a_broken_plugin_is_named_and_tried_again(fresh_registry, monkeypatch, tmp_path):
    _entry_points(monkeypatch, tmp_path, {"plug_broken": "import no_such_dependency\n"}, {"broken": "plug_broken"})
    for _ in range(2):  # not marked loaded after a failure: the next use reports it again
        with pytest.raises(MissingDependencyError, match="plugin 'broken'.*plug_broken.*no_such_dependency"):
            registry.list_models()
