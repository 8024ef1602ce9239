"""What makes a repository servable by any Triton, with nothing of this project installed:

- the project's own code the models import travels beside every Python model's `model.py`
  (the stub puts that folder on sys.path; model.py puts it first, so the repository runs the
  code it was built with even where another version is installed);
- `requirements.txt` at the root names the third-party packages the models import, pinned to
  the versions this build ran with;
- with --pack-env, those packages and what they require, packed into one archive at the root,
  `python_env.tar.gz`, that every Python model's EXECUTION_ENV_PATH names. One archive for all the
  models: `$$TRITON_MODEL_DIRECTORY/..` is the repository (a file at the root is not a model).
  The archive is a venv's layout for this build's interpreter (its Python version, its path), with
  an `activate` that only puts its `bin` first on PATH: the stub finds the packages through it.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import io
import shutil
import sys
import tarfile
from pathlib import Path, PurePosixPath

PROJECT_PACKAGES = ("jina_triton_pipeline", "jina_triton_client")
# what the Python models of each target import (triton_python_backend_utils comes with the stub)
STUB_REQUIREMENTS = {"cpu": ("numpy", "onnxruntime", "tokenizers"),
                     "cuda": ("numpy", "safetensors", "tokenizers", "torch")}
STUB_REQUIREMENTS["tensorrt"] = STUB_REQUIREMENTS["cuda"]  # its plans run in Triton's own backend
REQUIREMENTS_FILE = "requirements.txt"
PACKED_ENV = "python_env.tar.gz"
PACKED_ENV_PATH = f"$$TRITON_MODEL_DIRECTORY/../{PACKED_ENV}"
NUMPY_MODELS = ("preprocess", "postprocess", "encoder_onnx")


class PackError(RuntimeError):
    pass


def copy_project_code(version: Path) -> None:
    """The project's packages the models import, beside model.py (sources only)."""
    for name in PROJECT_PACKAGES:
        spec = importlib.util.find_spec(name)
        source = Path(next(iter(spec.submodule_search_locations)))
        target = version / name
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def execution_env(template: str, pack_env: bool, numpy_env: str) -> str:
    """EXECUTION_ENV_PATH of a Python model: the packed archive, else --numpy-env for the models
    that move numpy arrays, else none (the server's own environment)."""
    if pack_env:
        return PACKED_ENV_PATH
    return numpy_env if template in NUMPY_MODELS else ""


def _version(name: str) -> str:
    try:
        version = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        raise PackError(f"{name} is not installed in this environment ({sys.prefix}); the repository's models "
                        f"need it: pip install {name}") from None
    return version.split("+")[0]  # a local label (torch's +cpu) names a wheel index, not a version


def requirements(target: str) -> list[str]:
    return [f"{name}=={_version(name)}" for name in STUB_REQUIREMENTS[target]]


def write_requirements(repository: Path, target: str) -> Path:
    path = repository / REQUIREMENTS_FILE
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    header = (f"# What the Python models of this repository (target {target}) import, as built (Python {python}).\n"
              "# This project's own code is inside the repository, beside each model.py.\n")
    path.write_text(header + "".join(f"{line}\n" for line in requirements(target)))
    return path


# -- the packed environment -----------------------------------------------------------
def _requires(dist: importlib.metadata.Distribution) -> list[str]:
    """The names `dist` needs at run time on this machine (extras left out)."""
    from packaging.requirements import Requirement

    names = []
    for line in dist.requires or []:
        requirement = Requirement(line)
        if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
            names.append(requirement.name)
    return names


def closure(names) -> list[importlib.metadata.Distribution]:
    """The distributions `names` need, theirs included, each once."""
    from packaging.utils import canonicalize_name

    found: dict[str, importlib.metadata.Distribution] = {}
    pending = list(names)
    while pending:
        key = canonicalize_name(pending.pop())
        if key in found:
            continue
        try:
            found[key] = importlib.metadata.distribution(key)
        except importlib.metadata.PackageNotFoundError:
            raise PackError(f"{key} is not installed in this environment ({sys.prefix}); --pack-env packs what "
                            f"is installed: pip install {key}") from None
        pending += _requires(found[key])
    return [found[key] for key in sorted(found)]


def _site_files(dist: importlib.metadata.Distribution):
    """(file, its name inside site-packages) for every installed file of `dist` there. RECORD names
    files relative to the dist's own site folder (purelib or platlib), so lib64 and symlinked
    installs pack as they import; scripts and data outside it (../../bin) are left out."""
    files = []
    for name in dist.files or []:
        parts = PurePosixPath(str(name)).parts
        path = Path(dist.locate_file(name))
        if parts[0] == ".." or "__pycache__" in parts or path.suffix == ".pyc" or not path.is_file():
            continue
        files.append((path.resolve(), PurePosixPath(*parts)))
    if not files:
        raise PackError(f"{dist.metadata['Name']} lists no installed files (no RECORD?): --pack-env cannot pack "
                        f"it; reinstall it with pip")
    return files


def _torch_is_cpu_only() -> bool:
    import torch

    return torch.version.cuda is None


def _add_text(archive: tarfile.TarFile, name: str, text: str, mode: int = 0o644) -> None:
    data = text.encode()
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    archive.addfile(info, io.BytesIO(data))


def pack_environment(repository: Path, target: str, progress=None) -> dict:
    """python_env.tar.gz at the repository's root; returns what it holds and weighs."""
    report = progress or (lambda message: None)
    python = f"python{sys.version_info.major}.{sys.version_info.minor}"
    base = Path(getattr(sys, "_base_executable", sys.executable))
    dists = closure(STUB_REQUIREMENTS[target])
    if not str(base).startswith("/usr/bin/"):
        report(f"WARNING: {PACKED_ENV} names the interpreter {base}; a server whose Python is elsewhere "
               f"(an NGC image's /usr/bin/{python}) will not find the packed packages: build from a venv of "
               f"/usr/bin/{python}")
    if target != "cpu" and _torch_is_cpu_only():
        report(f"WARNING: the torch packed for the {target} target is a CPU build: the encoders would run on "
               f"the CPU; build from an environment with a CUDA torch")
    report(f"packing {len(dists)} distributions into {PACKED_ENV} ({', '.join(d.metadata['Name'] for d in dists)})")
    path, unpacked = repository / PACKED_ENV, 0
    with tarfile.open(path, "w:gz", compresslevel=4) as archive:
        _add_text(archive, "pyvenv.cfg", f"home = {base.parent}\ninclude-system-site-packages = false\n"
                                         f"version = {'.'.join(map(str, sys.version_info[:3]))}\n")
        _add_text(archive, "bin/activate", "# sourced by Triton's Python backend before it starts a stub: the stub "
                                           "finds this environment's packages through PATH\n"
                                           'export PATH="$(dirname "${BASH_SOURCE[0]:-$0}"):$PATH"\n')
        for name in ("python", "python3", python):
            link = tarfile.TarInfo(f"bin/{name}")
            link.type, link.linkname, link.mode = tarfile.SYMTYPE, str(base), 0o777
            archive.addfile(link)
        for dist in dists:
            for file, name in _site_files(dist):
                archive.add(file, arcname=f"lib/{python}/site-packages/{name}", recursive=False)
                unpacked += file.stat().st_size
    found = {"archive": PACKED_ENV, "python": python, "interpreter": str(base), "archive_bytes": path.stat().st_size,
             "unpacked_bytes": unpacked, "distributions": {d.metadata["Name"]: d.version for d in dists}}
    report(f"{PACKED_ENV}: {found['archive_bytes'] / 1e6:.0f} MB ({unpacked / 1e6:.0f} MB unpacked) for {python}")
    return found
