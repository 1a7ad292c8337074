"""Run TorchServe on this machine (loopback, token auth on) for tests and benchmarks.

Takes the repository's `torchserve/config.properties` and changes only the three listen
addresses, so what is tested and measured is what ships.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import requests

BIN = Path(sys.executable).parent


@dataclass
class LocalTorchServe:
    workdir: Path
    process: subprocess.Popen
    env: dict[str, str]
    inference_url: str
    management_url: str
    metrics_url: str
    # Keep-alive connections, one per client thread, as real clients hold them.
    clients: threading.local = field(default_factory=threading.local)

    @property
    def keys(self) -> dict[str, str]:
        """The token keys TorchServe wrote to key_file.json in its working directory."""
        raw = json.loads((self.workdir / "key_file.json").read_text())
        return {name: raw[name]["key"] for name in ("inference", "management")}

    def predict(
        self,
        body: object,
        key: str | None = "default",
        raw: bytes | None = None,
        model: str = "restar",
        timeout: float = 60,
    ) -> requests.Response:
        headers = {"Content-Type": "application/json"}
        token = self.keys["inference"] if key == "default" else key
        if token:
            headers["Authorization"] = f"Bearer {token}"
        data = raw if raw is not None else json.dumps(body).encode()
        if not hasattr(self.clients, "session"):
            self.clients.session = requests.Session()
        return self.clients.session.post(
            f"{self.inference_url}/predictions/{model}", data=data, headers=headers, timeout=timeout
        )

    def memory_rss_mb(self) -> float:
        """Resident memory of the frontend and its worker processes together."""
        root = psutil.Process(self.process.pid)
        processes = [root, *root.children(recursive=True)]
        total = 0
        for process in processes:
            try:
                total += process.memory_info().rss
            except psutil.NoSuchProcess:
                continue
        return total / 2**20

    def stop(self, timeout: float = 60) -> int:
        """`torchserve --stop` with the same TEMP, then wait for the process; returns its exit code."""
        subprocess.run(
            [str(BIN / "torchserve"), "--stop"],
            cwd=self.workdir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return self.process.wait(timeout=timeout)


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def local_config(config: Path, ports: list[int]) -> str:
    """`config` with its 3 HTTP addresses and 2 gRPC ports moved to `ports`: servers can run side by side."""
    text = config.read_text()
    http, grpc = ports[:3], ports[3:]
    for name, port in zip(("inference", "management", "metrics"), http, strict=True):
        text = re.sub(rf"^{name}_address=.*$", f"{name}_address=http://127.0.0.1:{port}", text, flags=re.M)
    for name, port in zip(("inference", "management"), grpc, strict=True):
        text = re.sub(rf"^grpc_{name}_port=.*$", f"grpc_{name}_port={port}", text, flags=re.M)
    return text


@contextmanager
def torchserve(
    model_store: Path, config: Path, workdir: Path, ready_timeout: float = 180
) -> Iterator[LocalTorchServe]:
    """Start TorchServe in `workdir` on free loopback ports; yield once `restar` answers; stop after."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "tmp").mkdir(exist_ok=True)
    ports = free_ports(5)
    (workdir / "config.properties").write_text(local_config(config, ports))
    env = {**os.environ, "TEMP": str(workdir / "tmp"), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    command = [
        str(BIN / "torchserve"),
        "--start",
        "--foreground",
        "--ncs",
        "--model-store",
        str(model_store),
        "--ts-config",
        str(workdir / "config.properties"),
    ]
    with open(workdir / "ts.log", "w") as log:
        process = subprocess.Popen(
            command, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        server = LocalTorchServe(workdir, process, env, *(f"http://127.0.0.1:{port}" for port in ports[:3]))
        try:
            _wait_until_serving(server, ready_timeout)
            yield server
        finally:
            if process.poll() is None:
                try:
                    server.stop()
                except (subprocess.TimeoutExpired, OSError):
                    os.killpg(process.pid, signal.SIGKILL)


def _wait_until_serving(server: LocalTorchServe, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and server.process.poll() is None:
        if (server.workdir / "key_file.json").is_file():
            try:
                if server.predict({"text": "warm up"}).status_code == 200:
                    return
            except (requests.ConnectionError, ValueError, KeyError):  # not up yet, or key file half-written
                pass
        time.sleep(1)
    raise RuntimeError(
        f"TorchServe did not start serving:\n{(server.workdir / 'ts.log').read_text()[-4000:]}"
    )
