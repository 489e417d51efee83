"""Writing artifact folders atomically: built in a temporary sibling folder, renamed into place.

An existing artifact of the same name is replaced only once the new one is complete and its gate
passed; on any error the temporary folder is removed and nothing half-written is left behind.  An
artifact whose gate failed never replaces a good one: it is kept beside it as ``NAME.failed/`` with
its report (``commit_verdict``).  Timings and host facts go to ``export_log.json`` beside the
manifest, unhashed, so the manifest of two exports of the same model is byte-identical.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import shutil
import tempfile
from pathlib import Path

from lightdeploy.errors import UsageError
from lightdeploy.runtimes.manifest import EXPORT_LOG, MANIFEST, SCHEMA_VERSION, file_hashes
from lightdeploy.versions import __version__

FAILED_SUFFIX = ".failed"


def check_writable(out_dir: Path) -> None:
    """Fail early (before any work) if ``out_dir`` cannot be created or written."""
    probe_parent = out_dir
    while not probe_parent.exists():
        probe_parent = probe_parent.parent
    if not probe_parent.is_dir() or not os.access(probe_parent, os.W_OK | os.X_OK):
        raise UsageError(
            f"Output folder {str(out_dir)!r} is not writable ({str(probe_parent)!r} does not allow "
            "writing). Choose another with --out."
        )


@contextlib.contextmanager
def staging_folder(final: Path):
    """Yield an empty temporary folder beside ``final``; the caller commits it with ``commit``."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; the artifact gets normal permissions
    try:
        yield tmp
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_manifest(folder: Path, manifest: dict) -> dict:
    """Hash every file in ``folder`` into the manifest and write it (atomically within the folder)."""
    manifest = {"schema_version": SCHEMA_VERSION, **manifest, "files": file_hashes(folder)}
    tmp = folder / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, default=str))
    os.replace(tmp, folder / MANIFEST)
    return manifest


# The CPU extensions that decide which kernels the CPU backends pick (the int8 and bf16 ones above all):
# a latency, or an int8 speed-up over fp32, holds for CPUs with the same ones.
KERNEL_FEATURES = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_int8", "amx_bf16")


def host_facts() -> dict:
    """What the export ran on (for export_log.json; no host name, user or path)."""
    cpu, flags = platform.processor(), set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                cpu = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
            if flags and cpu:
                break
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": cpu,
        "cpu_features": [f for f in KERNEL_FEATURES if f in flags],
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }


def cpu_summary(facts: dict | None = None) -> str:
    """``AMD EPYC (avx2 avx512f avx512_vnni avx512_bf16), 2 cores``: the CPU a timing is read with."""
    facts = facts or host_facts()
    features = " ".join(facts["cpu_features"]) or "none of " + "/".join(KERNEL_FEATURES)
    return f"{facts['cpu'] or facts['machine']} ({features}), {facts['cpu_count']} cores"


def write_export_log(folder: Path, seconds: dict, details: dict | None = None) -> None:
    """``export_log.json``: when, on what, and how long each step took (never hashed or verified)."""
    log = {
        "lightdeploy_version": __version__,
        "finished_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": host_facts(),
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
        **(details or {}),
    }
    (folder / EXPORT_LOG).write_text(json.dumps(log, indent=2, default=str))


def failed_path(final: Path) -> Path:
    """Where an artifact whose gate failed is kept: ``NAME.failed`` beside ``NAME``."""
    return final.with_name(final.name + FAILED_SUFFIX)


def commit_verdict(tmp: Path, final: Path, passed: bool) -> Path:
    """Commit ``tmp`` as ``final`` when its gate passed (a stale ``NAME.failed`` is removed), else as
    ``NAME.failed`` beside it, leaving ``final`` (a good artifact, or nothing) untouched.  Returns
    where the artifact now is."""
    failed = failed_path(final)
    if not passed:
        commit(tmp, failed)
        return failed
    commit(tmp, final)
    if failed.exists():  # the report of an earlier failed attempt no longer describes this artifact
        shutil.rmtree(failed, ignore_errors=True)
    return final


def commit(tmp: Path, final: Path) -> None:
    """Move the finished ``tmp`` folder to ``final``, replacing an old artifact only now."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
