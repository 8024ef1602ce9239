"""The build cache: one entry per checkpoint content and recipe, safe against crashes and
concurrent builds.

- Every file lands under its final name only once complete (written aside, then renamed).
- One build at a time per entry (an exclusive lock); a second build waits, then reuses.
- Each file's SHA-256 is recorded; a file that no longer matches is rebuilt.
- The cache is private to its user (mode 0700): what Triton loads from it runs as code.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
from pathlib import Path

from jina_triton_models.layout import default_cache_dir, digest, private_dir  # noqa: F401 - the cache's API

REPORT = "report.json"




def atomic_write_bytes(path: Path, data: bytes) -> None:
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_bytes(data)
    os.replace(partial, path)


def atomic_write_json(path: Path, value) -> None:
    atomic_write_bytes(path, json.dumps(value, indent=2).encode())


class CacheEntry:
    def __init__(self, directory: Path):
        self.directory = directory
        private_dir(directory.parent.parent)  # the cache root
        private_dir(directory)

    @contextlib.contextmanager
    def locked(self):
        """Exclusive for the duration of a build of this entry."""
        with open(self.directory / ".lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield self
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    @property
    def report(self) -> dict:
        file = self.directory / REPORT
        try:
            return json.loads(file.read_text()) if file.is_file() else {}
        except json.JSONDecodeError:
            return {}

    def save_report(self, report: dict) -> None:
        atomic_write_json(self.directory / REPORT, report)

    def partial(self, path: Path) -> Path:
        """Where to write `path` before it is complete."""
        path.parent.mkdir(parents=True, exist_ok=True)
        return path.with_name(f".{path.name}.{os.getpid()}.partial")

    def commit(self, partial: Path, path: Path) -> str:
        """Move a complete file into place; returns the digest to record."""
        os.replace(partial, path)
        return digest(path)

    @staticmethod
    def intact(path: Path, recorded: str | None) -> bool:
        return bool(recorded) and path.is_file() and digest(path) == recorded
