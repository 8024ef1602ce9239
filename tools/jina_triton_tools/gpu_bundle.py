"""`make gpu-bundle`: what the GPU machine needs and cannot download, in a folder git ignores.

- triton.tar.xz: `tritonserver`, the Python backend, the Python 3.12 stub and only the shared
  libraries they need (followed through `readelf -d` NEEDED entries), in the wheel's layout
  (pytriton/tritonserver/..., nvidia_pytriton.libs/) so the stub's RPATH resolves;
- a numpy 1.26.4 cp312 wheel for the stubs (numpy 2 breaks the 24.10-era stub);
- tokenizer.json: the real vocabulary (the GPU machine has no quicktok).
The project's sources travel with the working tree.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tarfile
from pathlib import Path

STUB_PYTHON = "3.12"


def needed(binary: Path) -> list[str]:
    out = subprocess.run(["readelf", "-d", str(binary)], capture_output=True, text=True).stdout
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out)


def library_closure(roots: list[Path], libs: Path) -> list[Path]:
    """The wheel's own libraries the roots need, directly or through each other."""
    found, todo = {}, list(roots)
    while todo:
        for name in needed(todo.pop()):
            path = libs / name
            if path.is_file() and name not in found:
                found[name] = path
                todo.append(path)
    return sorted(found.values())


def triton_files(stub_python: str = STUB_PYTHON) -> list[tuple[Path, str]]:
    """(file, name in the archive) for the server, the Python backend, one stub and their libraries."""
    from jina_triton_serving.triton_process import STUB, triton_home

    home = triton_home()
    libs = home.parent.parent / "nvidia_pytriton.libs"
    stub = home / "python_backend_stubs" / stub_python / STUB
    roots = [home / "bin" / "tritonserver", home / "backends" / "python" / "libtriton_python.so", stub]
    files = [(root, f"pytriton/tritonserver/{root.relative_to(home)}") for root in roots[:2]]
    files.append((stub, f"pytriton/tritonserver/backends/python/{STUB}"))
    files += [(path, f"pytriton/tritonserver/backends/python/{path.name}")
              for path in (home / "backends" / "python").iterdir()
              if path.is_file() and path.name not in (STUB, "libtriton_python.so")]
    files += [(path, f"nvidia_pytriton.libs/{path.name}") for path in library_closure(roots, libs)]
    return files


def make_bundle(out: Path, progress=print, python: str = STUB_PYTHON, preset: int = 6) -> Path:
    """The bundle for a machine whose stubs run Python `python` (3.12 on the GPU machine; the box
    emulation in CI uses this machine's 3.11)."""
    out.mkdir(parents=True, exist_ok=True)
    files = triton_files(python)
    progress(f"triton.tar.xz: {len(files)} files (compressing, about a minute)")
    with tarfile.open(out / "triton.tar.xz", "w:xz", preset=preset) as archive:
        for path, name in files:
            archive.add(path, arcname=name)
    tag = python.replace(".", "")
    for stale in out.glob("numpy-*.whl"):
        if f"-cp{tag}-" not in stale.name:
            stale.unlink()
    if not list(out.glob(f"numpy-1.26.4-cp{tag}-*.whl")):
        progress(f"numpy 1.26.4 for Python {python}")
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        "--python-version", python, "--platform", "manylinux_2_17_x86_64",
                        "--platform", "manylinux2014_x86_64", "-d", str(out), "numpy==1.26.4"], check=True)
    from jina_triton_build.synth_tokenizer import real_tokenizer_json

    (out / "tokenizer.json").write_text(real_tokenizer_json())
    total = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    progress(f"bundle {out}: {total / 1e6:.1f} MB")
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jina_triton_tools.gpu_bundle", description=__doc__)
    parser.add_argument("--out", default=".gpu-bundle")
    parser.add_argument("--python", default=STUB_PYTHON, help="the Python version of the machine's stubs")
    args = parser.parse_args(argv)
    make_bundle(Path(args.out), python=args.python)
    return 0


if __name__ == "__main__":
    sys.exit(main())
