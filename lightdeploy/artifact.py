"""Writing artifact folders atomically: built in a temporary sibling folder, renamed into place.

An existing artifact of the same name is replaced only once the new one is complete; on any error
the temporary folder is removed and nothing half-written is left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from lightdeploy.errors import UsageError
from lightdeploy.runtimes.manifest import MANIFEST, SCHEMA_VERSION, file_hashes


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


def commit(tmp: Path, final: Path) -> None:
    """Move the finished ``tmp`` folder to ``final``, replacing an old artifact only now."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
