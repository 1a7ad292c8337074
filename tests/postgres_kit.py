"""A throwaway PostgreSQL server for tests: `initdb` in a temporary folder, `postgres` on 127.0.0.1 at a
free port with its socket in that folder, trust auth for one user, a fresh database per test, and
everything stopped and removed at the end. Never touches a system cluster (Debian's `main`)."""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from restar.serving.serve_local import free_ports

USER = "restar"
SCHEME = "postgresql+psycopg2"  # as docker-compose.yml names it: SQLAlchemy 2.1 alone would pick psycopg 3
BIN_ENV = "RESTAR_PG_BIN"  # a folder with initdb and pg_ctl, where they are not on PATH or under /usr/lib
# initdb and postgres refuse to run as root: as root the cluster belongs to one of these
UNPRIVILEGED_OWNERS = ("postgres", "nobody")
# A test database need not survive a crash; without fsync the server is several times faster.
SERVER_OPTIONS = "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300"


def find_bin_dir() -> Path | None:
    """The folder of initdb, pg_ctl and postgres: $RESTAR_PG_BIN, PATH, else /usr/lib/postgresql/N/bin."""
    candidates: list[Path] = []
    if os.environ.get(BIN_ENV):
        candidates.append(Path(os.environ[BIN_ENV]))
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    debian = Path("/usr/lib/postgresql")
    if debian.is_dir():
        versions = [p for p in debian.iterdir() if p.name.isdigit()]
        candidates += [p / "bin" for p in sorted(versions, key=lambda p: int(p.name), reverse=True)]
    for folder in candidates:
        if all((folder / program).is_file() for program in ("initdb", "pg_ctl", "postgres")):
            return folder
    return None


def unavailable_reason() -> str | None:
    """Why no test cluster can start here, or None."""
    if find_bin_dir() is None:
        return (
            "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found: install Debian's `postgresql` "
            f"(bash scripts/system_deps.sh) or set {BIN_ENV}"
        )
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        return "psycopg2 is not installed: pip install -e '.[dev]'"
    if os.geteuid() == 0 and _owner() is None:
        return f"running as root and none of the users {UNPRIVILEGED_OWNERS} exists to own the cluster"
    return None


def _owner() -> str | None:
    """The unprivileged user that owns the cluster when tests run as root; None when not root."""
    if os.geteuid() != 0:
        return None
    for name in UNPRIVILEGED_OWNERS:
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    return None


class PostgresCluster:
    """One `postgres` server; `create_database()` hands out empty databases as SQLAlchemy/MLflow URLs."""

    def __init__(self, bin_dir: Path):
        self.bin_dir = bin_dir
        self.owner = _owner()
        self.root = Path(tempfile.mkdtemp(prefix="restar-pg-"))
        self.port = 0
        self._names = itertools.count(1)

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def start(self) -> PostgresCluster:
        (self.root / "socket").mkdir()
        if self.owner is not None:
            entry = pwd.getpwnam(self.owner)
            for path in (self.root, self.root / "socket"):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        self._run("initdb", "-D", str(self.data_dir), "-U", USER, "--auth=trust", "-E", "UTF8")
        (self.port,) = free_ports(1)
        options = f"-h 127.0.0.1 -p {self.port} -k {self.root / 'socket'} {SERVER_OPTIONS}"
        log = str(self.root / "postgres.log")
        self._run("pg_ctl", "-D", str(self.data_dir), "-l", log, "-w", "-t", "60", "-o", options, "start")
        return self

    def url(self, database: str) -> str:
        return f"{SCHEME}://{USER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, label: str = "test") -> str:
        """A new, empty database; returns its URL."""
        import psycopg2

        name = f"{''.join(c if c.isalnum() else '_' for c in label.lower())[:40]}_{next(self._names)}"
        connection = psycopg2.connect(host="127.0.0.1", port=self.port, user=USER, dbname="postgres")
        try:
            connection.autocommit = True  # CREATE DATABASE cannot run inside a transaction
            with connection.cursor() as cursor:
                cursor.execute(f'CREATE DATABASE "{name}"')
        finally:
            connection.close()
        return self.url(name)

    def stop(self) -> None:
        """Stop the server (fast shutdown: open sessions are cut) and remove its folder."""
        if (self.data_dir / "postmaster.pid").exists():
            with contextlib.suppress(subprocess.CalledProcessError):
                self._run("pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)

    def _run(self, program: str, *args: str) -> None:
        command = [str(self.bin_dir / program), *args]
        if self.owner is not None:
            command = ["runuser", "-u", self.owner, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, cwd=self.root)
        if done.returncode != 0:
            log = self.root / "postgres.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise subprocess.CalledProcessError(
                done.returncode, command, done.stdout, f"{done.stderr[-2000:]}\n{tail}"
            )
