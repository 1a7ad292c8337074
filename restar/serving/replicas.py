"""Several TorchServe replicas behind one nginx gateway (`torchserve/nginx.replicas.conf`).

Every TorchServe process makes its own random keys at start, so a token valid on one replica is
refused by the next. Clients send one gateway key; the gateway checks it and forwards each request
with the chosen replica's own inference key (the template's header says how). When a replica starts
again, or its key is renewed, the gateway config is rendered again and nginx reloaded:

    python -m restar.serving.replicas reload --run-dir RUN \
        --replica r1=127.0.0.1:8080=/srv/ts1/key_file.json ...

`ReplicaSet` runs the whole thing on this machine (tests, the rolling procedure).
"""

from __future__ import annotations

import json
import os
import random
import re
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import click
import psutil
import requests

from restar.serving.serve_local import (
    GatewayError,
    LocalTorchServe,
    find_nginx,
    free_ports,
    launch_torchserve,
    listen_urls,
    local_config,
    wait_until_serving,
)

TEMPLATE = Path(__file__).resolve().parents[2] / "torchserve" / "nginx.replicas.conf"
NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
KEY = re.compile(r"[A-Za-z0-9_=-]{8,256}")  # TorchServe's keys: 6 random bytes, URL-safe base64
GATEWAY_KEY = re.compile(r"[A-Za-z0-9_-]{16,256}")  # ours: 32 random bytes
ADDRESS = re.compile(r"[\w.-]+:\d{1,5}")
BLOCKS = {"# @MEMBER_BEGIN@": "# @MEMBER_END@", "# @REPLICA_BEGIN@": "# @REPLICA_END@"}
GATEWAY_KEY_FILE = "gateway.key"
INTERNAL_BASE = 8101  # replica i's internal server: 127.0.0.1:8101+i


class ReplicaError(RuntimeError):
    """A replica or the replica gateway cannot be configured, started or reloaded."""


@dataclass(frozen=True)
class ReplicaTarget:
    """One replica as the gateway sees it."""

    name: str
    address: str  # host:port of its inference port
    key: str  # its own inference key
    drained: bool = False


def read_inference_key(key_file: Path) -> str:
    """The inference key from a TorchServe key_file.json."""
    return json.loads(key_file.read_text())["inference"]["key"]


def _check(replicas: Sequence[ReplicaTarget], gateway_key: str, listen: str, internal_base: int) -> None:
    if not replicas:
        raise ReplicaError("a replica gateway needs at least one replica")
    names = [replica.name for replica in replicas]
    if len(set(names)) != len(names):
        raise ReplicaError(f"replica names repeat: {names}")
    for replica in replicas:
        if not NAME.fullmatch(replica.name):
            raise ReplicaError(f"not a replica name (a-z, 0-9, -): {replica.name!r}")
        if not ADDRESS.fullmatch(replica.address):
            raise ReplicaError(f"not a host:port address: {replica.address!r}")
        if not KEY.fullmatch(replica.key):
            raise ReplicaError(f"replica {replica.name}: its key is not a TorchServe key")
    if not GATEWAY_KEY.fullmatch(gateway_key):
        raise ReplicaError("the gateway key must be 16-256 characters of A-Z, a-z, 0-9, _ and -")
    if not ADDRESS.fullmatch(listen):
        raise ReplicaError(f"not a host:port address: {listen!r}")
    if not 1024 <= internal_base <= 65536 - len(replicas):
        raise ReplicaError(
            f"internal ports from {internal_base} for {len(replicas)} replicas are out of range"
        )


def render_replica_gateway(
    replicas: Sequence[ReplicaTarget],
    gateway_key: str,
    listen: str = "127.0.0.1:8000",
    internal_base: int = INTERNAL_BASE,
    template: Path = TEMPLATE,
) -> str:
    """The gateway config for `replicas`: the template with each marked block repeated per replica and
    the placeholders filled in (comment lines keep theirs). Replica i's internal server listens on
    127.0.0.1:`internal_base`+i. The result holds keys: keep it private."""
    _check(replicas, gateway_key, listen, internal_base)
    common = {"@LISTEN@": listen, "@GATEWAY_KEY@": gateway_key, "@TRIES@": str(len(replicas))}
    internal = {replica.name: f"127.0.0.1:{internal_base + i}" for i, replica in enumerate(replicas)}

    def fill(line: str, replica: ReplicaTarget | None = None) -> str:
        if line.lstrip().startswith("#"):
            return line
        values = dict(common)
        if replica is not None:
            values |= {
                "@NAME@": replica.name,
                "@INTERNAL@": internal[replica.name],
                "@ADDRESS@": replica.address,
                "@KEY@": replica.key,
                "@DOWN@": " down" if replica.drained else "",
            }
        for placeholder, value in values.items():
            line = line.replace(placeholder, value)
        return line

    served = ", ".join(f"{r.name} {r.address}{' (drained)' if r.drained else ''}" for r in replicas)
    out = [
        f"# Rendered from torchserve/{template.name} (listen {listen}; {served}). Holds keys: mode 0600.\n"
    ]
    block: list[str] | None = None
    end = ""
    for line in template.read_text().splitlines(keepends=True):
        marker = line.strip()
        if block is None and marker in BLOCKS:
            block, end = [], BLOCKS[marker]
        elif block is not None and marker == end:
            out += [fill(body, replica) for replica in replicas for body in block]
            block = None
        elif block is not None:
            block.append(line)
        else:
            out.append(fill(line))
    return "".join(out)


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path` with mode 0600 from the start, replacing it whole (never half-written)."""
    staged = path.with_name(f".{path.name}.tmp")
    staged.unlink(missing_ok=True)
    fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(staged, path)


def gateway_key(run_dir: Path) -> str:
    """The gateway key in `run_dir/gateway.key`, made (random, mode 0600) when there is none."""
    path = run_dir / GATEWAY_KEY_FILE
    if path.is_file():
        key = path.read_text().strip()
        if not GATEWAY_KEY.fullmatch(key):
            raise ReplicaError(f"{path} does not hold a gateway key")
        return key
    key = secrets.token_urlsafe(32)
    run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_private(path, key + "\n")
    return key


def nginx_command(run_dir: Path, *args: str) -> list[str]:
    return [find_nginx(), "-p", f"{run_dir}/", "-c", str(run_dir / "nginx.conf"), "-e", "stderr", *args]


def write_gateway_config(
    run_dir: Path,
    replicas: Sequence[ReplicaTarget],
    listen: str = "127.0.0.1:8000",
    internal_base: int = INTERNAL_BASE,
) -> bool:
    """Render the config for `replicas` into the private `run_dir`; True when it changed."""
    run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    run_dir.chmod(0o700)
    text = render_replica_gateway(replicas, gateway_key(run_dir), listen, internal_base)
    config = run_dir / "nginx.conf"
    if config.is_file() and config.read_text() == text:
        return False
    write_private(config, text)
    return True


def reload_gateway(run_dir: Path, timeout: float = 150) -> None:
    """Check the config with `nginx -t`, then `nginx -s reload`; return once the master runs new workers
    and the old ones have finished their requests (so a drained replica gets no more traffic)."""
    checked = subprocess.run(nginx_command(run_dir, "-t"), capture_output=True, text=True)
    if checked.returncode != 0:
        raise ReplicaError(f"nginx refuses the gateway config:\n{checked.stderr[-2000:]}")
    master = psutil.Process(int((run_dir / "nginx.pid").read_text()))
    before = {child.pid for child in master.children()}
    subprocess.run(nginx_command(run_dir, "-s", "reload"), capture_output=True, text=True, check=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = {child.pid for child in master.children()}
        if now and not now & before:
            return
        time.sleep(0.05)
    raise ReplicaError(f"nginx did not finish reloading in {timeout} s")


def free_port_run(count: int, attempts: int = 50) -> int:
    """The first of `count` consecutive loopback ports that are all free now."""
    for _ in range(attempts):
        base = random.randint(20000, 60000 - count)
        sockets: list[socket.socket] = []
        try:
            for port in range(base, base + count):
                sockets.append(socket.socket())
                sockets[-1].bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise ReplicaError(f"found no {count} consecutive free loopback ports")


def launch_replica_gateway(
    run_dir: Path,
    replicas: Sequence[ReplicaTarget],
    listen: str,
    internal_base: int = INTERNAL_BASE,
    ready_timeout: float = 30,
) -> subprocess.Popen:
    """Render the config into `run_dir` and start nginx on it in the foreground (its log in
    `run_dir/gateway.log`); return once it answers."""
    write_gateway_config(run_dir, replicas, listen, internal_base)
    with open(run_dir / "gateway.log", "w") as log:
        process = subprocess.Popen(
            nginx_command(run_dir, "-g", "daemon off;"),
            cwd=run_dir,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            requests.get(f"http://{listen}", timeout=5)  # any answer: the gateway's own 404
            return process
        except requests.ConnectionError:
            time.sleep(0.1)
    stop_process_group(process)
    raise GatewayError(f"the replica gateway did not start:\n{(run_dir / 'gateway.log').read_text()[-4000:]}")


def stop_process_group(process: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM (nginx: fast shutdown), SIGKILL to its group after `timeout` s."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@dataclass
class LocalReplica:
    name: str
    workdir: Path
    config_text: str  # its TorchServe config; ports stay the same across restarts
    server: LocalTorchServe | None = None
    key: str | None = None  # the last inference key seen (kept when it stops, until it starts again)
    drained: bool = False

    @property
    def address(self) -> str:
        return urlsplit(listen_urls(self.config_text)[0]).netloc


@dataclass
class ReplicaSet:
    """`count` TorchServe processes serving `model_store`, each in its own workdir on its own loopback
    ports, behind the replica gateway on 127.0.0.1:`port` (run dir `root/gateway`)."""

    model_store: Path
    config: Path
    root: Path
    count: int = 2
    port: int = field(default_factory=lambda: free_ports(1)[0])
    internal_base: int = 0  # chosen at start: `count` free consecutive ports
    replicas: list[LocalReplica] = field(default_factory=list)
    gateway: subprocess.Popen | None = None

    @property
    def run_dir(self) -> Path:
        return self.root / "gateway"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def gateway_key(self) -> str:
        return gateway_key(self.run_dir)

    def replica(self, name: str) -> LocalReplica:
        (found,) = [replica for replica in self.replicas if replica.name == name]
        return found

    def targets(self) -> list[ReplicaTarget]:
        return [
            ReplicaTarget(r.name, r.address, r.key, r.drained) for r in self.replicas if r.key is not None
        ]

    def start(self, ready_timeout: float = 300) -> None:
        self.replicas = [
            LocalReplica(f"replica-{i}", self.root / f"replica-{i}", local_config(self.config, free_ports(5)))
            for i in range(1, self.count + 1)
        ]
        with ThreadPoolExecutor(self.count) as pool:
            list(pool.map(lambda replica: self._start_replica(replica, ready_timeout), self.replicas))
        self.internal_base = free_port_run(self.count)
        self.gateway = launch_replica_gateway(
            self.run_dir, self.targets(), f"127.0.0.1:{self.port}", self.internal_base
        )

    def _start_replica(self, replica: LocalReplica, ready_timeout: float) -> None:
        replica.server = launch_torchserve(
            self.model_store, replica.config_text, replica.workdir, replica.workdir / "ts.log"
        )
        wait_until_serving(replica.server, ready_timeout)
        replica.key = replica.server.keys["inference"]

    def refresh(self) -> bool:
        """Re-read the running replicas' keys; render and reload when the config changed."""
        for replica in self.replicas:
            if replica.server is not None and replica.server.process.poll() is None:
                replica.key = replica.server.keys["inference"]
        changed = write_gateway_config(
            self.run_dir, self.targets(), f"127.0.0.1:{self.port}", self.internal_base
        )
        if changed:
            reload_gateway(self.run_dir)
        return changed

    def stop_replica(self, name: str) -> int:
        """`torchserve --stop` on one replica; the gateway finds out passively."""
        replica = self.replica(name)
        if replica.server is None:
            raise ReplicaError(f"{name} is not running")
        code = replica.server.stop()
        replica.server = None
        return code

    def start_replica(self, name: str, ready_timeout: float = 300) -> None:
        """Start a stopped replica on its old ports, out of rotation until it serves: its new key
        reaches the gateway (render + reload) before any client request does."""
        replica = self.replica(name)
        if replica.server is not None:
            raise ReplicaError(f"{name} is running")
        drained = replica.drained
        self.set_drained(name, True)
        self._start_replica(replica, ready_timeout)
        self.set_drained(name, drained)

    def set_drained(self, name: str, drained: bool) -> None:
        """Take a replica out of (or back into) the gateway's rotation; returns once in-flight
        requests on the old config have finished."""
        self.replica(name).drained = drained
        self.refresh()

    def roll(self, ready_timeout: float = 300) -> None:
        """The rolling restart: one replica at a time, drain, stop, start, back into rotation."""
        for replica in list(self.replicas):
            self.set_drained(replica.name, True)
            self.stop_replica(replica.name)
            self.start_replica(replica.name, ready_timeout)
            self.set_drained(replica.name, False)

    def renew_keys(self) -> None:
        """Ask each running replica for a new inference key (TorchServe's keys expire after
        token_expiration_min), one replica at a time and out of rotation meanwhile: TorchServe drops
        the old key at once, and refuses it with a 400, which nginx cannot tell from a handler's."""
        for replica in self.replicas:
            if replica.server is None:
                continue
            drained = replica.drained
            self.set_drained(replica.name, True)
            api = json.loads((replica.workdir / "key_file.json").read_text())["API"]["key"]
            response = requests.get(
                f"{replica.server.management_url}/token",
                params={"type": "inference"},
                headers={"Authorization": f"Bearer {api}"},
                timeout=30,
            )
            response.raise_for_status()
            self.set_drained(replica.name, drained)

    def close(self) -> None:
        if self.gateway is not None:
            stop_process_group(self.gateway)
        for replica in self.replicas:
            if replica.server is not None and replica.server.process.poll() is None:
                try:
                    replica.server.stop()
                except (subprocess.TimeoutExpired, OSError):
                    os.killpg(replica.server.process.pid, signal.SIGKILL)
            replica.server = None


@contextmanager
def replica_set(model_store: Path, config: Path, root: Path, count: int = 2) -> Iterator[ReplicaSet]:
    """A started `ReplicaSet`; everything stopped after."""
    replicas = ReplicaSet(model_store, config, root, count)
    try:
        replicas.start()
        yield replicas
    finally:
        replicas.close()


def parse_replica(_ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]) -> list[tuple]:
    parsed = []
    for value in values:
        name, _, rest = value.partition("=")
        address, _, key_file = rest.partition("=")
        if not (name and address and key_file):
            raise click.BadParameter(f"expected NAME=HOST:PORT=KEY_FILE, got {value!r}")
        parsed.append((name, address, Path(key_file)))
    return parsed


@click.group()
def cli() -> None:
    """The replica gateway's config: render it from the replicas' key files, reload nginx."""


def _render(
    run_dir: Path, listen: str, internal_base: int, replicas: list[tuple], drained: tuple[str, ...]
) -> bool:
    targets = []
    for name, address, key_file in replicas:
        try:
            key = read_inference_key(key_file)
        except (OSError, ValueError, KeyError) as exc:
            raise click.ClickException(f"{name}: no inference key in {key_file} ({exc})") from exc
        targets.append(ReplicaTarget(name, address, key, name in drained))
    try:
        return write_gateway_config(run_dir.absolute(), targets, listen, internal_base)
    except ReplicaError as exc:
        raise click.ClickException(str(exc)) from exc


GATEWAY_OPTIONS = (
    click.option(
        "--run-dir",
        type=click.Path(file_okay=False, path_type=Path),
        required=True,
        help="The gateway's run dir.",
    ),
    click.option("--listen", default="127.0.0.1:8000", show_default=True, help="host:port to serve."),
    click.option(
        "--internal-base-port",
        "internal_base",
        type=click.IntRange(1024, 65535),
        default=INTERNAL_BASE,
        show_default=True,
        help="Replica i's internal server listens on 127.0.0.1:this+i.",
    ),
    click.option(
        "--replica",
        "replicas",
        multiple=True,
        required=True,
        callback=parse_replica,
        help="NAME=HOST:PORT=KEY_FILE: a replica, its inference address and its key_file.json (repeat).",
    ),
    click.option("--drain", multiple=True, help="A replica name to take out of rotation (repeat)."),
)


def gateway_options(command: Callable) -> Callable:
    """The options `render` and `reload` share, in this order: the run dir, the addresses, the replicas."""
    for option in reversed(GATEWAY_OPTIONS):  # the top decorator is applied last
        command = option(command)
    return command


@cli.command()
@gateway_options
def render(
    run_dir: Path, listen: str, internal_base: int, replicas: list[tuple], drain: tuple[str, ...]
) -> None:
    """Write RUN_DIR/nginx.conf (mode 0600) and RUN_DIR/gateway.key (made when missing).

    \b
    Example:
        python -m restar.serving.replicas render --run-dir /srv/gw \\
            --replica r1=127.0.0.1:8080=/srv/ts1/key_file.json \\
            --replica r2=127.0.0.1:9080=/srv/ts2/key_file.json
        nginx -p /srv/gw/ -c /srv/gw/nginx.conf -e stderr -g 'daemon off;'
    """
    _render(run_dir, listen, internal_base, replicas, drain)
    click.echo(run_dir.absolute() / "nginx.conf")


@cli.command()
@gateway_options
def reload(
    run_dir: Path, listen: str, internal_base: int, replicas: list[tuple], drain: tuple[str, ...]
) -> None:
    """Render again and reload the running gateway when the config changed (a replica restarted, a
    key was renewed, a replica drained or back); returns once the old workers have finished.

    \b
    Example (take r2 out of rotation):
        python -m restar.serving.replicas reload --run-dir /srv/gw \
            --replica r1=... --replica r2=... --drain r2
    """
    if _render(run_dir, listen, internal_base, replicas, drain):
        try:
            reload_gateway(run_dir.absolute())
        except (ReplicaError, OSError, ValueError) as exc:
            raise click.ClickException(str(exc)) from exc
        click.echo("reloaded")
    else:
        click.echo("unchanged")


if __name__ == "__main__":
    cli()
