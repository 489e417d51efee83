"""The artifact's manifest.json: reading it and verifying the sha256 of every file it lists.

Kept torch-free: edge apps verify artifacts with this before running them.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from lightdeploy.errors import ArtifactError

MANIFEST = "manifest.json"
SCHEMA_VERSION = 1


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_hashes(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of every file in ``folder`` except the manifest itself."""
    return {
        str(p.relative_to(folder)): sha256(p) for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST
    }


def read_manifest(folder: str | Path, *, verify: bool = True) -> dict:
    """Read ``folder/manifest.json``; with ``verify``, check every listed file's sha256."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise ArtifactError(
            f"{str(folder)!r} is not a lightdeploy artifact: it has no {MANIFEST}. "
            "Give a folder written by `lightdeploy export`."
        )
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{str(path)!r} is corrupted (not JSON: {exc}). Re-export the artifact.") from None
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise ArtifactError(
            f"{str(path)!r} has schema version {manifest.get('schema_version')!r}; this lightdeploy reads "
            f"version {SCHEMA_VERSION}. Re-export the artifact with this version."
        )
    if verify:
        verify_files(folder, manifest)
    return manifest


def verify_files(folder: Path, manifest: dict) -> None:
    for rel, expected in manifest.get("files", {}).items():
        path = folder / rel
        if not path.is_file():
            raise ArtifactError(f"Artifact {str(folder)!r} is incomplete: {rel} is missing. Re-export it.")
        actual = sha256(path)
        if actual != expected:
            raise ArtifactError(
                f"Artifact {str(folder)!r} has been modified or corrupted: the sha256 of {rel} is "
                f"{actual[:12]}..., the manifest says {expected[:12]}.... Re-export it; do not run "
                "a model file that does not match its manifest."
            )
