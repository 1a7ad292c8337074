"""Run TorchServe on this machine (loopback, token auth on) for tests and benchmarks.

Takes the repository's `torchserve/config.properties` and changes only the three listen
addresses, so what is tested and measured is what ships. `gateway` runs the nginx gateway
(`torchserve/nginx.conf`) in front of it the same way.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
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
from urllib.parse import urlsplit

import psutil
import requests

BIN = Path(sys.executable).parent
GATEWAY_TEMPLATE = Path(__file__).resolve().parents[2] / "torchserve" / "nginx.conf"


@dataclass
class LocalTorchServe:
    workdir: Path
    process: subprocess.Popen
    env: dict[str, str]
    inference_url: str
    management_url: str
    metrics_url: str
    console_log: Path
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
        stop_torchserve(self.workdir, self.env, timeout)
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


class GatewayError(RuntimeError):
    """nginx is not installed, or the gateway did not start."""


@dataclass
class LocalGateway:
    workdir: Path
    process: subprocess.Popen
    url: str

    def stop(self, timeout: float = 30) -> int:
        """Fast shutdown (SIGTERM to the master); returns its exit code."""
        self.process.terminate()
        return self.process.wait(timeout=timeout)


def render_gateway_config(
    torchserve: str,
    listen: str = "127.0.0.1:8000",
    retry_hop: str = "127.0.0.1:8001",
    template: Path = GATEWAY_TEMPLATE,
) -> str:
    """The gateway config proxying to TorchServe's inference port at `torchserve`, listening on `listen`,
    with its internal retry hop on `retry_hop` (loopback).

    All are host:port; everything else is the template as it ships (comments keep the placeholders).
    """
    for address in (torchserve, listen, retry_hop):
        if not re.fullmatch(r"[\w.-]+:\d{1,5}", address):
            raise ValueError(f"not a host:port address: {address!r}")
    if not retry_hop.startswith("127.0.0.1:"):
        raise ValueError(f"the retry hop must listen on loopback: {retry_hop!r}")

    def fill(line: str) -> str:
        if line.lstrip().startswith("#"):
            return line
        return (
            line.replace("@LISTEN@", listen)
            .replace("@RETRY_HOP@", retry_hop)
            .replace("@TORCHSERVE@", torchserve)
        )

    header = f"# Rendered from torchserve/{template.name} (listen {listen}, TorchServe {torchserve}).\n"
    return header + "".join(fill(line) for line in template.read_text().splitlines(keepends=True))


def find_nginx(search_path: str | None = None) -> str:
    """The nginx binary on PATH or in the sbin folders (often missing from a non-root PATH)."""
    if search_path is None:
        search_path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin"])
    found = shutil.which("nginx", path=search_path)
    if not found:
        raise GatewayError(
            "nginx is not installed; the gateway in front of TorchServe needs it. On Debian/Ubuntu: "
            "apt-get install nginx-light (or, as root, bash scripts/system_deps.sh)"
        )
    return found


def launch_gateway(
    upstream_url: str,
    workdir: Path,
    port: int,
    ready_timeout: float = 30,
    template: Path = GATEWAY_TEMPLATE,
) -> LocalGateway:
    """Start the nginx gateway on 127.0.0.1:`port` in front of TorchServe's inference `upstream_url`;
    return once it answers (TorchServe need not be up). Config, pid, temp dirs and the log
    (`gateway.log`) stay in `workdir`."""
    nginx = find_nginx()
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "nginx.conf"
    hop = port
    while hop == port:
        (hop,) = free_ports(1)
    config.write_text(
        render_gateway_config(
            urlsplit(upstream_url).netloc, f"127.0.0.1:{port}", f"127.0.0.1:{hop}", template
        )
    )
    command = [nginx, "-p", f"{workdir}/", "-c", str(config), "-e", "stderr", "-g", "daemon off;"]
    with open(workdir / "gateway.log", "w") as log:
        process = subprocess.Popen(
            command, cwd=workdir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = LocalGateway(workdir, process, f"http://127.0.0.1:{port}")
    try:
        _wait_until_answering(server, ready_timeout)
    except GatewayError:
        _stop_gateway(server)
        raise
    return server


@contextmanager
def gateway(
    upstream_url: str, workdir: Path, ready_timeout: float = 30, template: Path = GATEWAY_TEMPLATE
) -> Iterator[LocalGateway]:
    """`launch_gateway` on a free loopback port; yield once it answers; stop it after."""
    server = launch_gateway(upstream_url, workdir, free_ports(1)[0], ready_timeout, template)
    try:
        yield server
    finally:
        _stop_gateway(server)


def _stop_gateway(server: LocalGateway) -> None:
    if server.process.poll() is None:
        try:
            server.stop()
        except subprocess.TimeoutExpired:
            os.killpg(server.process.pid, signal.SIGKILL)
            server.process.wait()


def _wait_until_answering(server: LocalGateway, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and server.process.poll() is None:
        try:
            requests.get(server.url, timeout=5)  # any answer: the gateway's own 404
            return
        except requests.ConnectionError:
            time.sleep(0.1)
    raise GatewayError(f"nginx did not start:\n{(server.workdir / 'gateway.log').read_text()[-4000:]}")


class TorchServeError(RuntimeError):
    """TorchServe did not start serving."""


# A Unix socket path holds at most 107 bytes; TorchServe puts `.ts.sock.<port>` in TEMP.
MAX_SOCKET_DIR = 107 - len("/.ts.sock.65535")


def torchserve_temp(workdir: Path) -> Path:
    """TEMP for a TorchServe run in `workdir`: workdir/tmp, or, when that is too long a folder for the
    worker sockets, a short folder in /tmp named after `workdir` (the same one every time, so that
    `torchserve --stop` finds the pid file there)."""
    temp = workdir.resolve() / "tmp"
    if len(str(temp)) <= MAX_SOCKET_DIR:
        return temp
    digest = hashlib.sha256(str(workdir.resolve()).encode()).hexdigest()[:16]
    return Path("/tmp") / f"restar-ts-{digest}"


def torchserve_env(workdir: Path) -> dict[str, str]:
    """The environment for a TorchServe run in `workdir`: archives unpack in TEMP (`torchserve_temp`),
    where the launcher's pid file (which `torchserve --stop` reads) and the worker sockets also go;
    logs go to workdir/logs (TorchServe's log4j config reads LOG_LOCATION and METRICS_LOCATION)."""
    tmp, logs = str(torchserve_temp(workdir)), str(workdir / "logs")
    return {
        **os.environ,
        "TEMP": tmp,
        "TMPDIR": tmp,  # tempfile.gettempdir() prefers TMPDIR over TEMP for the pid file
        "LOG_LOCATION": logs,
        "METRICS_LOCATION": logs,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
    }


def listen_urls(config_text: str) -> tuple[str, str, str]:
    """The inference, management and metrics addresses of a TorchServe config."""
    urls = []
    for name in ("inference", "management", "metrics"):
        match = re.search(rf"^{name}_address=(.+)$", config_text, flags=re.M)
        if match is None:
            raise ValueError(f"the TorchServe config sets no {name}_address")
        urls.append(match[1].strip().rstrip("/"))
    return urls[0], urls[1], urls[2]


def launch_torchserve(
    model_store: Path, config_text: str, workdir: Path, console_log: Path, log_config: Path | None = None
) -> LocalTorchServe:
    """Start `torchserve --foreground` with `config_text`, its working directory `workdir` (so
    key_file.json lands there), its console written to `console_log` and, when given, its log4j
    config `log_config`; returns at once."""
    env = torchserve_env(workdir)
    for folder in (workdir, workdir / "logs", console_log.parent):
        folder.mkdir(parents=True, exist_ok=True)
    Path(env["TEMP"]).mkdir(mode=0o700, parents=True, exist_ok=True)
    (workdir / "config.properties").write_text(config_text)
    (workdir / "key_file.json").unlink(missing_ok=True)  # a previous run's keys are not this one's
    command = [
        str(BIN / "torchserve"),
        "--start",
        "--foreground",
        "--ncs",
        "--model-store",
        str(model_store.resolve()),
        "--ts-config",
        str(workdir / "config.properties"),
        *(["--log-config", str(log_config)] if log_config else []),
    ]
    with open(console_log, "w") as log:
        process = subprocess.Popen(
            command, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    return LocalTorchServe(workdir, process, env, *listen_urls(config_text), console_log=console_log)


def stop_torchserve(workdir: Path, env: dict[str, str], timeout: float = 60) -> None:
    """`torchserve --stop` as TorchServe documents it: same TEMP (it finds the pid there), same
    working directory (it deletes key_file.json there)."""
    subprocess.run(
        [str(BIN / "torchserve"), "--stop"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@contextmanager
def torchserve(
    model_store: Path, config: Path, workdir: Path, ready_timeout: float = 180
) -> Iterator[LocalTorchServe]:
    """Start TorchServe in `workdir` on free loopback ports; yield once `restar` answers; stop after."""
    server = launch_torchserve(model_store, local_config(config, free_ports(5)), workdir, workdir / "ts.log")
    try:
        wait_until_serving(server, ready_timeout)
        yield server
    finally:
        if server.process.poll() is None:
            try:
                server.stop()
            except (subprocess.TimeoutExpired, OSError):
                os.killpg(server.process.pid, signal.SIGKILL)


def wait_until_serving(server: LocalTorchServe, timeout: float) -> None:
    """Return once `restar` answers a prediction; TorchServeError with the console's tail if the
    process exits or `timeout` seconds pass first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and server.process.poll() is None:
        if (server.workdir / "key_file.json").is_file():
            try:
                if server.predict({"text": "warm up"}).status_code == 200:
                    return
            # not up yet (refused, or queued behind a worker that is still loading), or key file half-written
            except (requests.RequestException, ValueError, KeyError):
                pass
        time.sleep(1)
    raise TorchServeError(f"TorchServe did not start serving:\n{server.console_log.read_text()[-4000:]}")


@dataclass
class LocalMlflowServe:
    """`mlflow models serve` (uvicorn, local env) on a free loopback port."""

    process: subprocess.Popen
    url: str
    log: Path

    def predict(self, texts: list[str], timeout: float = 60) -> requests.Response:
        body = {"dataframe_records": [{"text": text} for text in texts]}
        return requests.post(f"{self.url}/invocations", json=body, timeout=timeout)

    def memory_rss_mb(self) -> float:
        """Resident memory of the `mlflow models serve` process and the uvicorn server it runs."""
        return process_tree_rss_mb(self.process.pid)


def launch_mlflow_server(
    backend_store_uri: str, artifacts: Path, log_path: Path
) -> tuple[subprocess.Popen, str]:
    """Start `mlflow server` (tracking and model registry, one worker) on a free loopback port in its own
    process group, its output appended to `log_path`; returns the process and its URL at once, before
    it answers (wait for its /health)."""
    (port,) = free_ports(1)
    command = [
        str(BIN / "mlflow"),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        backend_store_uri,
        "--artifacts-destination",
        str(artifacts),
    ]
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",  # no job-runner processes: faster (re)starts
    }
    with open(log_path, "a") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    return process, f"http://127.0.0.1:{port}"


def process_tree_rss_mb(pid: int) -> float:
    """Resident memory of process `pid` and all its descendants, in MiB."""
    root = psutil.Process(pid)
    total = 0
    for process in [root, *root.children(recursive=True)]:
        try:
            total += process.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total / 2**20


@contextmanager
def mlflow_serve(
    model_uri: str,
    workdir: Path,
    workers: int = 1,
    request_timeout: int = 60,
    ready_timeout: float = 180,
    env: dict[str, str] | None = None,
) -> Iterator[LocalMlflowServe]:
    """Run `mlflow models serve -m model_uri --env-manager local` on a free loopback port; yield once
    it answers a prediction; stop its process group after. MLflow's CLI runs a bare `uvicorn`, so the
    venv's bin/ goes first on PATH."""
    workdir.mkdir(parents=True, exist_ok=True)
    (port,) = free_ports(1)
    env = {**os.environ, **(env or {})}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    command = [
        str(BIN / "mlflow"),
        "models",
        "serve",
        "-m",
        model_uri,
        "--env-manager",
        "local",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
        "-w",
        str(workers),
        "-t",
        str(request_timeout),
    ]
    log_path = workdir / "mlflow_serve.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            command, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        server = LocalMlflowServe(process, f"http://127.0.0.1:{port}", log_path)
        try:
            deadline = time.monotonic() + ready_timeout
            while True:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"mlflow models serve did not start serving:\n{log_path.read_text()[-4000:]}"
                    )
                try:
                    if server.predict(["warm up"]).status_code == 200:
                        break
                except (requests.ConnectionError, requests.Timeout):
                    pass
                time.sleep(1)
            yield server
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
