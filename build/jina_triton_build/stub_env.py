"""A Python environment for Triton's Python-backend stubs, made without pip inside it.

`python -m venv --without-pip` (no ensurepip needed: Ubuntu ships it apart), wheels installed
with the interpreter's own pip (`--target`, no index), a `.pth` that puts given source folders
first and appends other site-packages after the environment's own, and a `bin/activate` of our
own: Triton's Python backend `source`s it before starting a stub of a model whose
EXECUTION_ENV_PATH names the folder (venv's own activate would unset PYTHONHOME, which the
3.12 stub on the GPU machine needs). The 3.12 stub ignores PYTHONPATH: the `.pth` is the way in.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

PTH_NAME = "jina_triton_paths.pth"


def site_packages(env: Path) -> Path:
    return next((env / "lib").glob("python3*/site-packages"))


def make_stub_env(env: Path, python: str | None = None, wheels: list[Path] = (), first: list[str] = (),
                  after: list[str] = ()) -> Path:
    """The environment at `env` (made once; the .pth and activate rewritten every time)."""
    python = python or sys.executable
    if not (env / "bin" / "python").exists():
        subprocess.run([python, "-m", "venv", "--without-pip", str(env)], check=True, capture_output=True)
    site = site_packages(env)
    for wheel in wheels:
        subprocess.run([python, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--upgrade", "--target",
                        str(site), str(wheel)], check=True, capture_output=True)
    # one line, run by exec() in site.py: no comprehension (its scope would not see `site`)
    (site / PTH_NAME).write_text(f"import sys, site; sys.path[:0] = {list(map(str, first))!r}; "
                                 f"list(map(site.addsitedir, {list(map(str, after))!r}))\n")
    (env / "bin" / "activate").write_text(
        "# sourced by Triton's Python backend before it starts a stub in this environment\n"
        f'export VIRTUAL_ENV="{env}"\nexport PATH="{env}/bin:$PATH"\n')
    return env
