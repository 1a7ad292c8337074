"""A real `mlflow server` for tests (SIGKILLed and restarted by tests/test_faults.py), an HTTP proxy
that kills it at a chosen request, and a small full disk."""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import requests

from restar.serving.serve_local import launch_mlflow_server

BIN = Path(sys.executable).parent


class MlflowServer:
    """`mlflow server` on a SQLite backend under `root` (or on `backend_store_uri`, e.g. PostgreSQL);
    `kill()` is SIGKILL of its whole process group."""

    def __init__(self, root: Path, backend_store_uri: str | None = None):
        self.root = root
        self.backend_store_uri = backend_store_uri or f"sqlite:///{root / 'server.db'}"
        self.process: subprocess.Popen | None = None
        self.url = ""

    def start(self, timeout_s: float = 90) -> str:
        """Start (or restart) the server on a free port; returns its URL."""
        self.stop()
        self.process, self.url = launch_mlflow_server(
            self.backend_store_uri, self.root / "artifacts", self.root / "server.log"
        )
        self._wait_healthy(timeout_s)
        return self.url

    def _wait_healthy(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            with contextlib.suppress(requests.ConnectionError):
                if requests.get(f"{self.url}/health", timeout=2).ok:
                    return
            if self.process.poll() is not None or time.monotonic() > deadline:
                tail = (self.root / "server.log").read_text()[-3000:]
                raise RuntimeError(f"mlflow server did not start:\n{tail}")
            time.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL, as the OOM killer or a pulled plug would: no shutdown code runs."""
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass(frozen=True)
class KillPoint:
    """Kill the server at the `occurrence`-th request `method` whose path ends with `path`,
    `before` forwarding it or `after` the server answered it (the answer is then never delivered)."""

    method: str
    path: str
    when: str  # before | after
    occurrence: int = 1


class KillingProxy:
    """Forwards HTTP to `server`; at `kill_point` it SIGKILLs the server, drops the client's connection
    unanswered and stops listening, so the client sees exactly what a dead server looks like."""

    def __init__(self, server: MlflowServer, kill_point: KillPoint | None):
        self.server = server
        self.kill_point = kill_point
        self.seen: list[str] = []
        self.killed = threading.Event()
        self._lock = threading.Lock()
        self._matches = 0
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self) -> KillingProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop_listening()

    def _stop_listening(self) -> None:
        if self._thread.is_alive():
            self._httpd.shutdown()
        self._httpd.server_close()

    def _triggered(self, method: str, path: str, when: str) -> bool:
        point = self.kill_point
        if point is None or self.killed.is_set() or method != point.method:
            return False
        if not urlsplit(path).path.endswith(point.path):
            return False
        with self._lock:
            if when == "before":
                self._matches += 1
            return self._matches == point.occurrence and when == point.when

    def _kill(self) -> None:
        self.killed.set()
        self.server.kill()
        threading.Thread(target=self._stop_listening, daemon=True).start()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                proxy.seen.append(f"{self.command} {urlsplit(self.path).path}")
                if proxy.killed.is_set() or proxy._triggered(self.command, self.path, "before"):
                    self._die()
                    return
                upstream = urlsplit(proxy.server.url)
                connection = http.client.HTTPConnection(upstream.hostname, upstream.port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                connection.request(self.command, self.path, body=body, headers=headers)
                response = connection.getresponse()
                payload = response.read()
                connection.close()
                if proxy._triggered(self.command, self.path, "after"):
                    self._die()
                    return
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def _die(self) -> None:
                if not proxy.killed.is_set():
                    proxy._kill()
                self.close_connection = True

            do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _forward

        return Handler


def can_mount_tmpfs(probe_dir: Path) -> bool:
    """True where this process may mount a tmpfs (root, or CAP_SYS_ADMIN); CI containers may differ."""
    if os.environ.get("RESTAR_TEST_NO_TMPFS") or not sys.platform.startswith("linux"):
        return False
    probe_dir.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe_dir)], capture_output=True
        )
    except OSError:  # no mount program
        return False
    if done.returncode != 0:
        return False
    subprocess.run(["umount", str(probe_dir)], check=True)
    return True
