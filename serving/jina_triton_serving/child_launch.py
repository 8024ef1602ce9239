"""Start a child that dies with the process that launched it, set up in a fresh interpreter of its
own instead of a `preexec_fn`.

A `preexec_fn` runs Python between fork and exec in a copy of a multithreaded parent. With gRPC
loaded there (every launcher of ours has clients open), gRPC's fork handlers restart its poller in
the child, which then finds its epoll descriptor closed by `close_fds` and aborts before exec:
SIGABRT, "Epoll1Poller encountered epoll_wait error: Bad file descriptor", 6 launches in 1,500 in
a plain loop here (grpc/grpc#43157 describes it). Without a `preexec_fn`, subprocess uses vfork
and no fork handler runs; this file, run as the child (`guarded`), dies with its parent, takes
the umask and private /dev/shm asked for, and execs the command in its own place (same pid).

Standard library only, run as a file with `-I`: it imports nothing of the project, and the
environment meant for the command (PYTHONHOME, PYTHONPATH for Triton's stubs) does not reach it.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys

PR_SET_PDEATHSIG = 1
CLONE_NEWNS, CLONE_NEWUSER = 0x00020000, 0x10000000
MS_NOSUID, MS_NODEV, MS_REC, MS_PRIVATE = 2, 4, 1 << 14, 1 << 18
SHM_DIR = "/dev/shm"


def guarded(command: list[str], umask: int | None = None, private_shm: int | None = None) -> list[str]:
    """`command` behind this launcher: it dies with the calling process (SIGTERM), with `umask`, in
    a private /dev/shm of `private_shm` bytes where the system allows one (`enter_private_shm`)."""
    launcher = [sys.executable, "-I", os.path.abspath(__file__), "--parent", str(os.getpid())]
    if umask is not None:
        launcher += ["--umask", str(umask)]
    if private_shm:
        launcher += ["--private-shm", str(private_shm)]
    return [*launcher, "--", *command]


def die_with_parent() -> None:
    """Linux sends this process SIGTERM when the thread that launched it ends (kept across exec)."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def enter_private_shm(size: int) -> bool:
    """A mount namespace of this process's own with a fresh tmpfs at /dev/shm (Triton's).

    The Python backend creates its regions (request texts, embeddings) mode 0644 whatever the
    umask (boost.interprocess sets the mode itself), so on a shared /dev/shm every local user
    could read them. In a private mount no other process sees them, and they vanish with the
    server. Unprivileged users get the mount through a user namespace mapping only their own
    uid (capabilities in it end at exec). Where neither is allowed (a container's seccomp
    profile; a container has its own /dev/shm anyway) it changes nothing and returns False."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    uid, gid = os.getuid(), os.getgid()
    if libc.unshare(CLONE_NEWNS | (0 if uid == 0 else CLONE_NEWUSER)) != 0:
        return False
    try:
        if uid != 0:
            for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
                with open(f"/proc/self/{name}", "w") as file:
                    file.write(text)
    except OSError:
        return False
    if libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        return False
    options = f"size={size},mode=0700".encode()
    return libc.mount(b"tmpfs", SHM_DIR.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, options) == 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="run a command that dies with its launcher")
    parser.add_argument("--parent", type=int, required=True, help="the launcher's pid")
    parser.add_argument("--umask", type=int)
    parser.add_argument("--private-shm", type=int)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command after --")
    die_with_parent()
    if os.getppid() != args.parent:  # the launcher died before the line above: no signal will come
        sys.exit(f"{command[0]}: not started, its launcher (pid {args.parent}) is gone")
    if args.umask is not None:
        os.umask(args.umask)
    if args.private_shm:
        enter_private_shm(args.private_shm)
    try:
        os.execvp(command[0], command)
    except OSError as exc:
        sys.exit(f"cannot start {command[0]}: {exc.strerror}")


if __name__ == "__main__":
    main()
