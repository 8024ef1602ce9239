"""The model repository on disk, as the build writes it and a server reads it: the manifest,
the snapshots (`REPO` is a link to a complete one), the hold a running server keeps on its
snapshot, and the private folders and digests of what Triton runs.

    REPO -> .REPO.snapshots/<snapshot>/{manifest.json, preprocess/, encoder_<task>/, postprocess/, embed_<task>/}

A rebuild writes a new snapshot beside the served one and swings the link in one step;
snapshots no server holds are pruned. Build and runtime both import this module; neither
imports the other for it.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

MANIFEST = "manifest.json"
BLOCK = 16 << 20


def read_manifest(repository: Path) -> dict:
    file = Path(repository) / MANIFEST
    if not file.is_file():
        raise FileNotFoundError(f"{repository} has no {MANIFEST}: build it with `jina-triton build`")
    return json.loads(file.read_text())


# -- folders and files --------------------------------------------------------------
def default_cache_dir() -> Path:
    """The build cache and Triton's backend folders: $JINA_TRITON_CACHE or ~/.cache/jina-triton."""
    return Path(os.environ.get("JINA_TRITON_CACHE") or Path.home() / ".cache" / "jina-triton")


def private_dir(path: Path) -> Path:
    """A folder only this user can enter (what Triton loads from it runs as code)."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.stat().st_uid == os.getuid():
        path.chmod(0o700)
    return path


def digest(path: Path) -> str:
    """SHA-256 of the whole file (about 2 s per gigabyte): a torn, truncated or swapped file is
    never taken for the one recorded."""
    found = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(BLOCK):
            found.update(block)
    return f"sha256:{found.hexdigest()}"


# -- snapshots ------------------------------------------------------------------------
def snapshots_dir(out: Path) -> Path:
    return out.parent / f".{out.name}.snapshots"


def new_snapshot(out: Path) -> Path:
    folder = snapshots_dir(out)
    folder.mkdir(parents=True, exist_ok=True)
    snapshot = folder / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{time.monotonic_ns() % 10**6:06d}"
    snapshot.mkdir()
    return snapshot


def publish(snapshot: Path, out: Path) -> None:
    """Point `out` at the new snapshot in one step, then prune snapshots nobody holds."""
    if out.is_dir() and not out.is_symlink():  # a repository from before snapshots: keep it as one
        os.replace(out, snapshots_dir(out) / f"{out.name}-legacy-{os.getpid()}")
    link = out.with_name(f".{out.name}.link-{os.getpid()}")
    if link.is_symlink():
        link.unlink()
    link.symlink_to(os.path.relpath(snapshot, out.parent))
    os.replace(link, out)
    for old in snapshots_dir(out).iterdir():
        if old != snapshot and old.is_dir() and not held(old):
            shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def hold(repository: Path):
    """Held by a running server: the snapshot it serves is never pruned meanwhile. The lock is
    on the snapshot folder itself, so a read-only repository (a Kubernetes volume) is held too."""
    snapshot = Path(repository).resolve()
    handle = os.open(snapshot, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(handle, fcntl.LOCK_SH)
        yield snapshot
    finally:
        os.close(handle)


def held(snapshot: Path) -> bool:
    handle = os.open(snapshot, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(handle)
    return False
