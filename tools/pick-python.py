#!/usr/bin/env python3
"""Print the Python to build the serving venv from (what `make venv` runs first).

Triton's Python-backend stub (one per Python 3.8-3.13 in the nvidia-pytriton wheel) loads the
shared libpython3.X.so.1.0 the system's loader finds; the venv must come from the interpreter
that owns that very library, or models importing ssl (transformers) fail to load. A candidate
qualifies when it was built shared and the loader resolves its soname into its own LIBDIR.
Python 3.11 first (the local torch 2.13.0 CPU wheel is for it), then the newest.
Exit status 1, with the reasons, when none qualifies.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

VERSIONS = ("3.11", "3.13", "3.12", "3.10", "3.9", "3.8")
PROBE = ("import json, sysconfig; print(json.dumps({k: sysconfig.get_config_var(k) for k in "
         "('Py_ENABLE_SHARED', 'INSTSONAME', 'LIBDIR')}))")


def loader_paths() -> dict[str, list[str]]:
    """soname -> the paths the dynamic loader's cache holds for it."""
    try:
        out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        out = ""
    found: dict[str, list[str]] = {}
    for line in out.splitlines()[1:]:
        name, _, path = line.strip().partition(" => ")
        found.setdefault(name.split(" (")[0], []).append(path.strip())
    return found


def candidates() -> list[str]:
    seen, found = set(), []
    for version in VERSIONS:
        for path in (shutil.which(f"python{version}"), f"/usr/bin/python{version}", f"/usr/local/bin/python{version}"):
            if path and os.path.isfile(path) and os.path.realpath(path) not in seen:
                seen.add(os.path.realpath(path))
                found.append(path)
    return found


def why_not(python: str, loader: dict) -> str | None:
    """None when `python` qualifies, else the reason."""
    try:
        info = json.loads(subprocess.run([python, "-c", PROBE], capture_output=True, text=True, timeout=30).stdout)
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return "does not run"
    if not info["Py_ENABLE_SHARED"] or not info["INSTSONAME"]:
        return "has no shared libpython (built without --enable-shared)"
    own = os.path.realpath(os.path.join(info["LIBDIR"], info["INSTSONAME"]))
    resolved = [os.path.realpath(p) for p in loader.get(info["INSTSONAME"], [])]
    if own not in resolved:
        return f"the loader finds {info['INSTSONAME']} at {resolved or 'no path'}, not at its own {own}"
    venv = subprocess.run([python, "-c", "import venv, ensurepip"], capture_output=True, timeout=30)
    if venv.returncode:
        return "has no venv/ensurepip module (Debian/Ubuntu: apt-get install python3.X-venv)"
    return None


def main() -> int:
    loader = loader_paths()
    reasons = []
    for python in candidates():
        reason = why_not(python, loader)
        if reason is None:
            print(python)
            return 0
        reasons.append(f"{python}: {reason}")
    print("no Python here can host Triton's Python backend stub:\n  " + "\n  ".join(reasons or ["none found"]) +
          "\ninstall one with its shared library (Debian/Ubuntu: python3.11 python3.11-venv libpython3.11; "
          "Fedora: python3.11) or pass PYTHON=/path/to/python3.X", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
