#!/usr/bin/env python3
"""Make this source tree importable without installing it: one symlink per package, named as the
wheels name them (pyproject.toml's [tool.setuptools] package-dir and packages, the client's
too), in a folder to put first on sys.path. For a machine that gets a copy of the tree and no
install: `python3 tools/source-view.py DIR` prints DIR. (`model_repository/` is the package
jina_triton_models: only the mapping makes that name importable.)"""
from __future__ import annotations

import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def packages(project: Path) -> dict[str, Path]:
    """Top-level package name -> its folder, for the project at `project` (a pyproject.toml's folder)."""
    setuptools = tomllib.loads((project / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapped = setuptools.get("package-dir", {})
    found = {}
    for name in setuptools.get("packages", []):
        top = name.split(".")[0]
        found.setdefault(top, project / mapped.get(top, top))
    return found


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(argv[0]).resolve()
    out.mkdir(parents=True, exist_ok=True)
    for project in (ROOT, ROOT / "client"):
        for name, folder in packages(project).items():
            link = out / name
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(folder)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
