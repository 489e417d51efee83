"""The artifact's manifest.json: reading it, and the checks an artifact passes before anything runs it.

- Every file the manifest lists matches its sha256, and every path it names stays inside the folder.
- The files the backend opens are all listed (``covers``): a file the manifest does not hash would run
  unchecked.
- The parity verdict (``verdict``): an artifact whose gate failed or never ran is refused unless the
  caller allows it; a verdict reached on a CPU estimate (a TensorRT plan) counts, reported as estimated.

Kept torch-free: edge apps verify artifacts with this before running them.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path, PurePosixPath

from lightdeploy.errors import ArtifactError

MANIFEST = "manifest.json"
# Timings and host facts of the export: beside the manifest, neither hashed nor listed in ``files``, so
# two exports of the same model give byte-identical manifests (docs/design.md#artifact).
EXPORT_LOG = "export_log.json"
SCHEMA_VERSION = 1
UNHASHED = (MANIFEST, EXPORT_LOG)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_hashes(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of every file in ``folder`` except the manifest and the export log."""
    return {
        p.relative_to(folder).as_posix(): sha256(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.relative_to(folder).as_posix() not in UNHASHED
    }


def read_manifest(folder: str | Path, *, verify: bool = True) -> dict:
    """Read ``folder/manifest.json``; with ``verify``, check every listed file's path and sha256."""
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
    if not isinstance(manifest, dict) or manifest.get("schema_version") != SCHEMA_VERSION:
        found = manifest.get("schema_version") if isinstance(manifest, dict) else None
        raise ArtifactError(
            f"{str(path)!r} has schema version {found!r}; this lightdeploy reads "
            f"version {SCHEMA_VERSION}. Re-export the artifact with this version."
        )
    if verify:
        verify_files(folder, manifest)
    return manifest


def inside(folder: Path, rel: str, what: str) -> Path:
    """``folder / rel``, refused when ``rel`` is absolute, climbs with '..', or resolves (through a
    symbolic link) outside the folder: an artifact never makes a backend read another file."""
    if not isinstance(rel, str) or not rel:
        raise ArtifactError(f"Artifact {str(folder)!r} names {what} {rel!r}, which is not a file name. Re-export it.")
    pure = PurePosixPath(rel)
    if pure.is_absolute() or ".." in pure.parts or "\\" in rel:
        raise ArtifactError(
            f"Artifact {str(folder)!r} names {what} {rel!r}, a path that leaves the artifact folder; refused. "
            "An artifact's files are plain names inside its folder: re-export it."
        )
    path = folder / pure
    root = folder.resolve()
    if path.exists() and not path.resolve().is_relative_to(root):
        raise ArtifactError(
            f"Artifact {str(folder)!r}: {what} {rel!r} is a link to {str(path.resolve())!r}, outside the "
            "artifact folder; refused. Copy the real file into the folder and re-export."
        )
    return path


def verify_files(folder: Path, manifest: dict) -> None:
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise ArtifactError(f"Artifact {str(folder)!r} has no 'files' table in its manifest. Re-export it.")
    for rel, expected in files.items():
        path = inside(folder, rel, "the file")
        if not path.is_file():
            raise ArtifactError(f"Artifact {str(folder)!r} is incomplete: {rel} is missing. Re-export it.")
        actual = sha256(path)
        if actual != expected:
            raise ArtifactError(
                f"Artifact {str(folder)!r} has been modified or corrupted: the sha256 of {rel} is "
                f"{actual[:12]}..., the manifest says {str(expected)[:12]}.... Re-export it; do not run "
                "a model file that does not match its manifest."
            )


def covers(folder: Path, manifest: dict, opened: list[str]) -> None:
    """Every file the backend opens is inside the folder and listed (so hashed) in ``files``."""
    for rel in opened:
        inside(folder, rel, "the backend file")
    listed = manifest.get("files") or {}
    unlisted = [rel for rel in opened if rel not in listed]
    if unlisted:
        raise ArtifactError(
            f"Artifact {str(folder)!r}: its manifest does not list {', '.join(unlisted)} in 'files', yet the "
            f"{manifest.get('backend')} backend opens it; an unhashed model file is refused. Re-export the "
            "artifact (its manifest then hashes every file)."
        )


def verdict(manifest: dict) -> tuple[str, str]:
    """(status, sentence): status "passed", "estimated", "failed" or "unverified" (the gate never ran)."""
    report = manifest.get("parity")
    if not isinstance(report, dict):
        return "unverified", "its parity gate never ran (exported with --no-parity)"
    if not report.get("passed"):
        failed = [c for c in report.get("checks", []) if not c.get("passed")]
        shown = "; ".join(
            f"{c.get('subject')} {c.get('metric')} = {c.get('value'):.6g} (limit {c.get('op')} {c.get('limit'):.6g})"
            for c in failed[:3]
            if isinstance(c.get("value"), (int, float)) and isinstance(c.get("limit"), (int, float))
        )
        return "failed", "it failed its parity gate" + (f" ({shown})" if shown else "")
    if report.get("estimated"):
        return "estimated", f"parity passed on a CPU estimate ({report.get('method') or 'estimated'})"
    return "passed", "parity passed"


def check_verdict(folder: Path, manifest: dict, allow_unverified: bool) -> str:
    """The verdict's sentence; raise for a failed or missing verdict unless ``allow_unverified``."""
    status, sentence = verdict(manifest)
    if status in ("failed", "unverified") and not allow_unverified:
        raise ArtifactError(
            f"Refused to load {str(folder)!r}: {sentence}. Re-export it with the gate passing, or run it "
            "anyway with allow_unverified=True (CLI: --allow-unverified)."
        )
    return sentence if status in ("passed", "estimated") else f"UNVERIFIED: {sentence}"
