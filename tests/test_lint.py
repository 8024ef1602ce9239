"""No source folder hides from the linter or from test discovery (ruff and pytest skip folders
named build/ by default; ours holds source)."""
from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

from conftest import REPO_ROOT

BIN = Path(sys.executable).parent


def test_ruff_checks_every_source_folder_and_finds_nothing():
    files = subprocess.run([str(BIN / "ruff"), "check", "--show-files", "."], capture_output=True, text=True,
                           cwd=REPO_ROOT).stdout
    for folder in ("build/jina_triton_build", "serving/jina_triton_serving", "tools/jina_triton_tools",
                   "model_repository/jina_triton_pipeline",
                   "model_repository/encoder_torch/1", "client/jina_triton_client", "loadtest", "tests"):
        assert f"{REPO_ROOT}/{folder}/" in files, f"ruff skips {folder}"
    result = subprocess.run([str(BIN / "ruff"), "check", "."], capture_output=True, text=True, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stdout[-3000:]


def test_pytest_replaces_the_default_that_skips_build_folders(request):
    """pytest's default norecursedirs holds 'build'; the project sets its own list without it."""
    options = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert "build" not in options["norecursedirs"]
    assert "build" not in request.config.getini("norecursedirs")
