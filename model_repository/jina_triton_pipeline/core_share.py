"""Which encoder passes run now on this server's cores, across its stub processes.

Every encoder instance is a process of its own, with a thread pool of its own. Two instances of 2
threads on a 2-core machine run 4 threads on 2 cores when both are busy, and their passes stall on
each other's threads; two instances of 1 thread each do more work in all, but a lone query runs
on half the machine (fp32, 10 tokens: 39 ms on 1 thread, 26 ms on 2). So an instance holds two
sessions of the same mapped weights, `threads` wide and 1 thread narrow, and runs a pass narrow
while the passes running beside it would leave too few cores for it to run wide (on 2 cores: any
other pass; README, "Sharing the cores").

Each stub holds one lock file in a folder that every stub of its server shares (named by the
server's pid, the stubs' parent), locked for the length of each of its passes; a pass counts the
other files' held locks. The kernel drops a dead stub's lock with it: a crash never leaves a pass
counted. Anything that fails here leaves the registry off (every pass wide, as without it).
"""
from __future__ import annotations

import fcntl
import os
import stat
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

SUFFIX = ".pass"
RELIST_S = 1.0  # how often a stub looks for stubs that started or stopped since


def server_folder(server_pid: int | None = None) -> Path | None:
    """The folder the stubs of one server share (private to this user), or None where none can be made."""
    base = Path("/dev/shm") if os.access("/dev/shm", os.W_OK) else Path(tempfile.gettempdir())
    folder = base / f"jina-triton-passes-{os.getuid()}-{server_pid or os.getppid()}"
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        found = folder.lstat()
    except OSError:
        return None
    owned = stat.S_ISDIR(found.st_mode) and found.st_uid == os.getuid() and not found.st_mode & 0o077
    return folder if owned else None


def usable_cores() -> int:
    """The cores this process may run on (its affinity: a container's cpuset, taskset)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def wide_fits(others: int, threads: int, cores: int) -> bool:
    """A pass may take all its `threads` while every pass running now could too: no more threads than cores."""
    return (others + 1) * threads <= cores


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # someone else's process: alive
        return True
    return True


class PassRegistry:
    """`with registry.running() as others:` holds this process's pass for the block; `others` is
    how many other processes of the folder run one now. Without a folder, `others` is always 0."""

    def __init__(self, folder: Path | None, name: str | None = None):
        self.folder, self.own, self.others, self.listed = folder, None, {}, 0.0
        self.name = name or f"{os.getpid()}"
        if folder is None:
            return
        try:
            self.own = os.open(folder / f"{self.name}{SUFFIX}", os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
        except OSError:
            self.folder = None

    def _relist(self) -> None:
        try:
            names = {entry.name for entry in os.scandir(self.folder) if entry.name.endswith(SUFFIX)}
        except OSError:
            names = set()
        names.discard(f"{self.name}{SUFFIX}")
        for name in list(names):
            pid = name.removesuffix(SUFFIX).split("-")[0]
            if pid.isdigit() and not _alive(int(pid)):
                _unlink(self.folder / name)  # a stub that died: its lock went with it
                names.discard(name)
        for gone in set(self.others) - names:
            os.close(self.others.pop(gone))
        for name in names - set(self.others):
            try:
                self.others[name] = os.open(self.folder / name, os.O_RDWR | os.O_CLOEXEC)
            except OSError:
                pass
        self.listed = time.monotonic()

    def running_elsewhere(self) -> int:
        if self.folder is None:
            return 0
        if time.monotonic() - self.listed > RELIST_S:
            self._relist()
        busy = 0
        for descriptor in self.others.values():
            try:
                fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                busy += 1
            except OSError:
                continue
            else:
                fcntl.flock(descriptor, fcntl.LOCK_UN)
        return busy

    @contextmanager
    def running(self):
        if self.own is None:
            yield 0
            return
        # own lock first, then count: two passes that start together each see the other
        fcntl.flock(self.own, fcntl.LOCK_EX)
        try:
            yield self.running_elsewhere()
        finally:
            fcntl.flock(self.own, fcntl.LOCK_UN)

    def close(self) -> None:
        for descriptor in self.others.values():
            os.close(descriptor)
        self.others.clear()
        if self.own is not None:
            os.close(self.own)
            self.own = None
            _unlink(self.folder / f"{self.name}{SUFFIX}")


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass
