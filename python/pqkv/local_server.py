"""pqkv.local_server.LocalServer: a pqkv-server process on a free loopback port, for
tests, examples and benchmarks on one machine (production runs the server on its own:
deploy/README.md).

    with LocalServer("bazel-bin/server/pqkv-server") as server:
        client = pqkv.Client(server.address)
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from typing import Optional, Sequence


def find_server_binary() -> str:
    """$PQKV_SERVER_BINARY, else bazel-bin/server/pqkv-server under the current
    directory, else pqkv-server on PATH."""
    candidates = [os.environ.get("PQKV_SERVER_BINARY", ""), "bazel-bin/server/pqkv-server",
                  shutil.which("pqkv-server") or ""]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise FileNotFoundError("no pqkv-server binary: build it (bazel build //server:pqkv-server) "
                            "or set PQKV_SERVER_BINARY")


class LocalServer:
    """Starts `binary` (default: find_server_binary()) with --port=0 plus `args` and waits
    until it has bound its ports. Stops it (SIGTERM, then SIGKILL) on stop() or exit."""

    def __init__(self, binary: Optional[str] = None, args: Sequence[str] = (),
                 start_timeout: float = 30.0, log_path: Optional[str] = None) -> None:
        self._dir = tempfile.mkdtemp(prefix="pqkv-server-")
        port_file = os.path.join(self._dir, "port")
        metrics_file = os.path.join(self._dir, "metrics_port")
        self.log_path = log_path or os.path.join(self._dir, "server.log")
        command = [binary or find_server_binary(), "--host=127.0.0.1", "--port=0",
                   f"--port_file={port_file}", "--metrics_port=0",
                   f"--metrics_port_file={metrics_file}", *args]
        with open(self.log_path, "wb") as log:
            self._process: Optional[subprocess.Popen] = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + start_timeout
        while True:
            port = _read_port(port_file)
            metrics_port = _read_port(metrics_file)
            if port and metrics_port:
                break
            if self._process.poll() is not None:
                raise RuntimeError(f"pqkv-server exited with {self._process.returncode}: "
                                   f"{self.log()[-2000:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"pqkv-server did not bind a port within {start_timeout} s")
            time.sleep(0.01)
        self.port = port
        self.metrics_port = metrics_port
        self.address = f"127.0.0.1:{port}"

    def log(self) -> str:
        """What the server has printed so far."""
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def stop(self) -> int:
        """Stops the server; returns its exit status."""
        if self._process is None:
            return 0
        self._process.send_signal(signal.SIGTERM)
        try:
            status = self._process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            status = self._process.wait()
        self._process = None
        return status

    def __enter__(self) -> "LocalServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _read_port(path: str) -> int:
    try:
        with open(path) as f:
            text = f.read().strip()
        return int(text) if text else 0
    except (FileNotFoundError, ValueError):
        return 0
