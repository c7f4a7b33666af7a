"""Network namespaces for the bed: create, enter (one thread at a time), delete, and sweep what
a killed run left behind. Everything goes through the ``ip`` binary (iproute2)."""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

NETNS_DIR = Path("/var/run/netns")
CLONE_NEWNET = 0x40000000
PREFIX = "scnb"
"""Every namespace of a bed is named ``scnb<pid>x<n>-<role>``: a sweep deletes those whose
process is gone."""

T = TypeVar("T")


class NetnsUnavailable(RuntimeError):
    """This process cannot build a bed here (not root, no ``ip``, no /dev/net/tun)."""


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=10)


def why_unavailable() -> str | None:
    """None when namespaces, TUN devices and tbf can be used; otherwise the reason."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None or shutil.which("tc") is None:
        return "iproute2 (ip, tc) is not installed"
    if not os.access("/dev/net/tun", os.R_OK | os.W_OK):
        return "/dev/net/tun is missing"
    probe = f"{PREFIX}{os.getpid()}probe"
    try:
        done = ip("netns", "add", probe, check=False)
        if done.returncode != 0:
            return f"ip netns add failed: {done.stderr.strip()}"
    finally:
        ip("netns", "del", probe, check=False)
    return None


def require() -> None:
    reason = why_unavailable()
    if reason is not None:
        raise NetnsUnavailable(reason)


def add(name: str) -> None:
    ip("netns", "add", name)
    ip("-n", name, "link", "set", "lo", "up")


def delete(name: str) -> None:
    ip("netns", "del", name, check=False)


def names() -> list[str]:
    out = ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


_OWNED = re.compile(rf"^{PREFIX}(\d+)x")


def sweep_stale() -> list[str]:
    """Delete the bed namespaces of processes that no longer exist (a run that was killed);
    returns their names. A live process's beds are left alone."""
    removed = []
    for name in names():
        m = _OWNED.match(name)
        if m is None:
            continue
        pid = int(m.group(1))
        if pid == os.getpid() or Path(f"/proc/{pid}").exists():
            continue
        delete(name)
        removed.append(name)
    return removed


def enter(name: str) -> None:
    """Move the CALLING THREAD into namespace ``name``: sockets it opens from now on (and threads
    it starts) live there; the rest of the process stays where it was."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(NETNS_DIR / name, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into {name}: {os.strerror(err)}")
    finally:
        os.close(fd)


@contextlib.contextmanager
def executor(name: str) -> Iterator[concurrent.futures.ThreadPoolExecutor]:
    """A one-thread executor whose thread lives in namespace ``name`` (for a socket or an HTTP
    client there, from a process that stays outside)."""
    pool = concurrent.futures.ThreadPoolExecutor(1, initializer=enter, initargs=(name,))
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def run_in(name: str, fn: Callable[[], T], timeout: float = 60.0) -> T:
    """``fn()`` in a fresh thread inside namespace ``name``."""
    with executor(name) as pool:
        return pool.submit(fn).result(timeout)


def exec_argv(name: str, argv: list[str]) -> list[str]:
    """argv that runs ``argv`` inside namespace ``name``."""
    return ["ip", "netns", "exec", name, *argv]
