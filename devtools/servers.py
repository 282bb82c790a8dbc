"""Local servers for tests, benchmarks and the demo: started on a free loopback port, stopped after.

Everything binds to 127.0.0.1 and lives only as long as the context manager.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from lantern.errors import ConfigError


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the child is killed when the process that started it dies, even by SIGKILL. SIGKILL,
    not SIGTERM: these servers are memory-only, so there is nothing a graceful stop would save,
    and a server busy shutting down gracefully must not outlive us."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
    except OSError:
        pass


def spawn(args: list[str], log) -> subprocess.Popen:
    """Start a server process that cannot outlive this one; its output goes to ``log``. It gets a
    session of its own: a terminal's Ctrl-C reaches us, and we stop it (see :func:`stop`)."""
    return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout_s: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ConfigError(f"server on port {port} exited with code {proc.returncode} before it was ready")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise ConfigError(f"nothing listened on 127.0.0.1:{port} within {timeout_s} s")


def stop(proc: subprocess.Popen, timeout_s: float = 5.0) -> None:
    """SIGTERM to the server's process group, SIGKILL after ``timeout_s``: nothing it forked survives."""
    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:  # the group is gone
            break
        try:
            proc.wait(wait_s)
            break
        except subprocess.TimeoutExpired:
            continue
    proc.poll()


@contextmanager
def redis_server(port: int | None = None, *options: str) -> Iterator[str]:
    """A memory-only redis-server (``options``: more of its flags, e.g. ``--requirepass``);
    yields its ``host:port``."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise ConfigError("no redis-server binary on PATH (Debian: apt-get install redis-server)")
    port = port or free_port()
    proc = spawn([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                  "--protected-mode", "yes", *options], subprocess.DEVNULL)
    try:
        wait_for_port(port, 10.0, proc)
        yield f"127.0.0.1:{port}"
    finally:
        stop(proc)
