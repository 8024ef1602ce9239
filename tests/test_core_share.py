"""The registry of running encoder passes that the cpu encoders share the cores by (core_share.py)."""
from __future__ import annotations

import os
import subprocess
import sys

from jina_triton_pipeline import core_share
from jina_triton_pipeline.core_share import PassRegistry, server_folder, usable_cores, wide_fits


def test_a_pass_sees_the_passes_running_in_other_registries(tmp_path):
    first, second, third = (PassRegistry(tmp_path, f"{os.getpid()}-{name}") for name in "abc")
    assert first.running_elsewhere() == 0
    with first.running() as others:
        assert others == 0
        assert second.running_elsewhere() == 1
        with second.running() as others:
            assert others == 1 and third.running_elsewhere() == 2
    assert second.running_elsewhere() == 0 and third.running_elsewhere() == 0
    third.close()
    assert not (tmp_path / f"{os.getpid()}-c{core_share.SUFFIX}").exists()


def test_a_dead_process_holds_no_pass_and_its_file_goes(tmp_path, monkeypatch):
    """The kernel drops a killed process's lock: it never counts; the next listing removes its file."""
    code = (f"import sys, time; sys.path[:0] = {sys.path!r}\n"
            "from pathlib import Path\nfrom jina_triton_pipeline.core_share import PassRegistry\n"
            f"r = PassRegistry(Path({str(tmp_path)!r}))\n"
            "with r.running():\n    print('running', flush=True); time.sleep(60)\n")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "running"
    watcher = PassRegistry(tmp_path, f"{os.getpid()}-w")
    assert watcher.running_elsewhere() == 1
    child.kill()
    child.wait()
    monkeypatch.setattr(core_share, "RELIST_S", 0.0)
    assert watcher.running_elsewhere() == 0
    assert [p.name for p in tmp_path.iterdir()] == [f"{os.getpid()}-w{core_share.SUFFIX}"]


def test_without_a_folder_every_pass_runs_alone():
    registry = PassRegistry(None)
    with registry.running() as others:
        assert others == 0
    registry.close()


def test_the_folder_is_private_and_refused_when_someone_else_could_write_it(tmp_path, monkeypatch):
    monkeypatch.setattr(core_share.tempfile, "gettempdir", lambda: str(tmp_path))
    monkeypatch.setattr(core_share.os, "access", lambda path, mode: False)  # no /dev/shm: the temp folder
    folder = server_folder(4242)
    assert folder == tmp_path / f"jina-triton-passes-{os.getuid()}-4242"
    assert folder.stat().st_mode & 0o777 == 0o700
    folder.chmod(0o777)
    assert server_folder(4242) is None
    folder.rmdir()
    folder.symlink_to(tmp_path)
    assert server_folder(4242) is None


def test_a_pass_runs_wide_while_every_running_pass_could():
    assert wide_fits(0, 2, 2) and not wide_fits(1, 2, 2)      # 2 cores: alone only
    assert wide_fits(1, 2, 4) and not wide_fits(2, 2, 4)      # 4 cores: two wide passes at once
    assert wide_fits(7, 2, 16) and not wide_fits(8, 2, 16)
    assert wide_fits(0, 1, 1) and 1 <= usable_cores() <= (os.cpu_count() or 1)
