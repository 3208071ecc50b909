"""A throwaway `redis-server` for tests: own process, free port, no persistence.

Never touches a shared Redis (e.g. the one on 6379): every instance picks its own free port
and is stopped by its own PID. Fault tests use `kill` (crash), `pause`/`resume` (SIGSTOP /
SIGCONT: a server that accepts connections but never answers) and `restart` (same port).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServerError(RuntimeError):
    pass


class RedisServer:
    def __init__(self, *, password: str | None = None, port: int | None = None) -> None:
        self.password = password
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None
        self._dir = Path(tempfile.mkdtemp(prefix="par-redis-test-"))
        self._paused = False

    # --- addresses -----------------------------------------------------------------------
    @property
    def url(self) -> str:
        if self.port is None:
            raise RedisServerError("server not started")
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self._dir / "redis.log"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    # --- lifecycle -----------------------------------------------------------------------
    def start(self, timeout_s: float = 10.0) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RedisServerError(
                "redis-server not found on PATH: the Redis tests start their own server "
                "(install it, e.g. `apt-get install redis-server`)"
            )
        fixed_port = self.port is not None
        last_error = ""
        for _ in range(1 if fixed_port else 5):
            port = self.port if fixed_port else free_port()
            assert port is not None
            args = [
                binary,
                "--port", str(port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--daemonize", "no",
                "--dir", str(self._dir),
                "--logfile", str(self.log_path),
                "--loglevel", "warning",
            ]  # fmt: skip
            if self.password:
                args += ["--requirepass", self.password]
            self.proc = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            self.port = port
            self._paused = False
            if self._wait_ready(timeout_s):
                return self
            last_error = self._log_tail()
            self._reap(signal.SIGKILL)
            if not fixed_port:
                self.port = None
        raise RedisServerError(f"redis-server did not start; log:\n{last_error}")

    def stop(self, timeout_s: float = 10.0) -> None:
        """Graceful stop (SIGTERM, then SIGKILL if it lingers). Idempotent."""
        if self.proc is None:
            return
        if self._paused:
            self.resume()
        self._reap(signal.SIGTERM, timeout_s)

    def kill(self) -> None:
        """Crash: SIGKILL, no shutdown. The port stays reserved for `restart`."""
        if self.proc is not None:
            self._reap(signal.SIGKILL)

    def restart(self, timeout_s: float = 10.0) -> RedisServer:
        """Start again on the same port (after `kill` or `stop`); data is gone."""
        self.stop()
        return self.start(timeout_s)

    def pause(self) -> None:
        """SIGSTOP: connections are accepted by the kernel but nothing is ever answered."""
        if self.proc is None:
            raise RedisServerError("server not running")
        os.kill(self.proc.pid, signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        if self.proc is not None and self._paused:
            os.kill(self.proc.pid, signal.SIGCONT)
        self._paused = False

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    # --- internals -----------------------------------------------------------------------
    def _reap(self, sig: int, timeout_s: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._paused = False

    def _wait_ready(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        ping = b"*1\r\n$4\r\nPING\r\n"
        if self.password:
            pw = self.password.encode()
            ping = b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n" % (len(pw), pw) + ping
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(ping)
                    reply = b""
                    while b"PONG" not in reply and not reply.startswith(b"-"):
                        chunk = s.recv(64)
                        if not chunk:
                            break
                        reply += chunk
                    if b"+PONG" in reply:
                        return True
            except OSError:
                pass
            time.sleep(0.05)
        return False

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"
