"""Faults: the registry killed during restar-promote, the predictor killed mid-run, a full disk during
predict and export, and every CLI against an unreachable registry.

Real components throughout: a real `mlflow server` process (SIGKILLed through an HTTP proxy at a chosen
request, then restarted on the same backend), real CLI subprocesses, a real small file system (tmpfs;
where mounting is not allowed, the file size limit RLIMIT_FSIZE, which fails writes the same way).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from promotion.cli import cli as promote_cli
from registry.audit import AuditLog
from registry.service import Registry
from restar.cli import cli as restar_cli
from restar.config import BaselineConfig
from restar.labels import LABELS, rating_to_label
from restar.model.inference import ModelMetadata
from restar.model.pyfunc import log_pyfunc
from restar.model.tfidf import KIND, fit
from restar.output_files import atomic_file
from restar.serving.serve_local import free_ports
from tests.faults_kit import BIN, KillingProxy, KillPoint, MlflowServer, can_mount_tmpfs

REPO_ROOT = Path(__file__).resolve().parents[1]
HANDLER = REPO_ROOT / "torchserve" / "handler.py"
MODEL_CONFIG = REPO_ROOT / "torchserve" / "model-config.yaml"
EXIT_REGISTRY = 3
EXIT_OUTPUT = 6
FAIL_FAST = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}


@pytest.fixture
def fail_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow's client retries a dead server for minutes by default; here it gives up at once."""
    for key, value in FAIL_FAST.items():
        monkeypatch.setenv(key, value)


@pytest.fixture(scope="module")
def real_rows(reviews_dir: Path) -> pd.DataFrame:
    """Upstream review rows (title, text, rating) as they come, HTML and emoji included."""
    source = sorted(reviews_dir.glob("*.jsonl*"))[0]
    frame = pd.read_json(source, lines=True, nrows=3000)
    return frame[["title", "text", "rating"]].reset_index(drop=True)


@pytest.fixture(scope="module")
def tfidf_model_dir(real_rows: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small, fast Re*Star model (the TF-IDF kind) fitted on real rows."""
    frame = pd.DataFrame({"text": real_rows["text"], "label": real_rows["rating"].map(rating_to_label)})
    model_dir = tmp_path_factory.mktemp("tfidf") / "model"
    model_dir.mkdir()
    fit(frame.head(1500), BaselineConfig(max_ngram=1)).save(model_dir)
    ModelMetadata(max_length=0, base_model="tfidf-logreg", kind=KIND, labels=LABELS).save(model_dir)
    return model_dir


def write_jsonl(frame: pd.DataFrame, path: Path) -> Path:
    frame.to_json(path, orient="records", lines=True, force_ascii=False)
    return path


def files_under(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file()}


# --- the registry killed during restar-promote -------------------------------------------------------


@pytest.fixture(scope="module")
def registry_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """A real `mlflow server` holding versions 1 and 2 of `restar`; tests kill and restart it."""
    server = MlflowServer(tmp_path_factory.mktemp("killed_registry"))
    server.start()
    registry = Registry("restar", server.url)
    mlflow.set_tracking_uri(server.url)
    for accuracy in (0.91, 0.93):
        with mlflow.start_run() as run:
            logged = mlflow.initialize_logged_model(name="model")
        model_uri = f"models:/{logged.model_id}"
        registry.register(model_uri, run.info.run_id, {"restar.config": "t"}, {"eval_accuracy": accuracy})
    mlflow.set_tracking_uri(None)
    policy = {"name": "faults", "gates": [{"name": "accuracy", "params": {"min": 0.5}}]}
    (server.root / "policy.yaml").write_text(yaml.safe_dump(policy))
    yield server
    server.stop()


def registry_state(server: MlflowServer) -> dict[str, object]:
    """Every version (with its tags), every alias and every audit row, read straight from the stores."""
    registry = Registry("restar", server.url)
    versions = {v.version: (v.run_id, v.source, v.tags, v.metrics) for v in registry.versions()}
    aliases = dict(registry.client.get_registered_model("restar").aliases)
    rows = AuditLog(audit_url(server)).history("restar", limit=1000)
    return {"versions": versions, "aliases": aliases, "audit": {r.id: r.as_dict() for r in rows}}


def audit_url(server: MlflowServer) -> str:
    return f"sqlite:///{server.root / 'audit.db'}"


def restar_promote(url: str, server: MlflowServer, *args: str) -> tuple[int, str]:
    """`restar-promote ARGS` against the registry at `url` (the server itself, or a proxy to it)."""
    policy = ["--policy", str(server.root / "policy.yaml"), "--audit-db", audit_url(server)]
    result = CliRunner().invoke(promote_cli, [*args, *policy], env={"MLFLOW_TRACKING_URI": url})
    return result.exit_code, result.output


KILLS = {
    # the compare-and-set read under the lock (the 1st alias read is the gates' "current production")
    "kill-before-cas-read": (KillPoint("GET", "/registered-models/alias", "before", 2), False, []),
    "kill-before-alias-move": (KillPoint("POST", "/registered-models/alias", "before"), False, ["pending"]),
    # the server moved the alias and died before answering: restar-promote cannot know it moved
    "kill-after-alias-move": (KillPoint("POST", "/registered-models/alias", "after"), True, ["pending"]),
}


@pytest.mark.parametrize("kill", list(KILLS), ids=list(KILLS))
def test_registry_killed_during_promotion(kill: str, registry_server: MlflowServer, fail_fast: None) -> None:
    kill_point, moves, rows_after_kill = KILLS[kill]
    before = registry_state(registry_server)
    previous = before["aliases"].get("production")
    candidate = 2 if previous in (None, "1") else 1

    with KillingProxy(registry_server, kill_point) as proxy:
        code, output = restar_promote(proxy.url, registry_server, "--version", str(candidate))
    registry_server.start()  # a new process on the same SQLite backend and artifact store
    assert proxy.killed.is_set(), f"the kill point was never reached: {proxy.seen}"
    assert code == EXIT_REGISTRY, output
    assert f"registry at {proxy.url} is unreachable" in output
    assert ("recorded as pending" in output) == (rows_after_kill == ["pending"])

    after = registry_state(registry_server)
    assert after["versions"] == before["versions"]  # every version and tag intact
    expected_aliases = {**before["aliases"], "production": str(candidate)} if moves else before["aliases"]
    assert after["aliases"] == expected_aliases
    assert {i: after["audit"][i] for i in before["audit"]} == before["audit"]  # old rows untouched
    new_rows = [row for i, row in after["audit"].items() if i not in before["audit"]]
    assert [row["decision"] for row in new_rows] == rows_after_kill  # no row claims a move yet

    code, output = restar_promote(registry_server.url, registry_server, "status")
    assert code == 0, output
    assert "moved outside restar-promote" not in output
    settled = registry_state(registry_server)["audit"]
    decisions = [settled[row["id"]]["decision"] for row in new_rows]
    assert decisions == (["moved"] if moves else ["aborted"] * len(new_rows))
    last_move = AuditLog(audit_url(registry_server)).last_move("restar", "production")
    holder = after["aliases"].get("production")
    assert (last_move.version if last_move else None) == (int(holder) if holder else None)


def test_promotion_and_rollback_work_after_the_restarts(
    registry_server: MlflowServer, fail_fast: None
) -> None:
    url = registry_server.url
    for candidate in (1, 2):
        code, output = restar_promote(url, registry_server, "--version", str(candidate))
        assert code == 0, output
    code, output = restar_promote(url, registry_server, "--rollback", "--reason", "test")
    assert code == 0, output
    assert registry_state(registry_server)["aliases"]["production"] == "1"


# --- the predictor killed mid-run --------------------------------------------------------------------


def partial_output(pid: int, out_dir: Path) -> int:
    """Bytes the process has written to a file in `out_dir` so far (0 while there is none)."""
    try:
        descriptors = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:  # the process is gone
        return 0
    for fd in descriptors:
        try:
            if os.readlink(fd).startswith(str(out_dir)) and (size := fd.stat().st_size) > 0:
                return size
        except OSError:  # the descriptor closed meanwhile
            continue
    return 0


def test_predictor_killed_mid_run_leaves_nothing_and_a_rerun_completes(
    real_rows: pd.DataFrame, tiny_model_dir: Path, tmp_path: Path
) -> None:
    rows = real_rows.head(800)
    input_path = write_jsonl(rows[["title", "text"]], tmp_path / "reviews.jsonl")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    output = out_dir / "predictions.parquet"
    args = ["predict", "--input", str(input_path), "--output", str(output)]
    args += ["--model-uri", str(tiny_model_dir), "--chunk-rows", "100", "--batch-size", "50"]

    with open(tmp_path / "killed.log", "w") as log:
        process = subprocess.Popen([str(BIN / "restar"), *args], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    written = 0
    while not (written := partial_output(process.pid, out_dir)) and process.poll() is None:
        assert time.monotonic() < deadline, (tmp_path / "killed.log").read_text()[-2000:]
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=30) == -signal.SIGKILL, "finished before it could be killed"
    assert written > 0  # part of the output was on disk when it died
    assert list(out_dir.iterdir()) == []  # no output, no partial file, no temporary file

    rerun = CliRunner().invoke(restar_cli, args)  # the same command again (in-process: no start-up)
    assert rerun.exit_code == 0, rerun.output[-3000:]
    assert list(out_dir.iterdir()) == [output]
    answered = pd.read_parquet(output)
    assert len(answered) == len(rows)
    assert answered["text"].tolist() == rows["text"].tolist()  # every row, in input order
    assert answered["label"].notna().all()


# --- atomic outputs, with and without unnamed temporary files ---------------------------------------


@pytest.mark.parametrize("unnamed", [True, False], ids=["O_TMPFILE", "named-temp"])
def test_atomic_file_publishes_whole_or_nothing(
    unnamed: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not unnamed:  # as on a kernel or file system without unnamed files
        monkeypatch.delattr(os, "O_TMPFILE", raising=False)
    target = tmp_path / "out.csv"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_file(target) as handle:
        handle.write(b"half of the new")
        raise RuntimeError("the model failed")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["out.csv"]
    with atomic_file(target) as handle:
        handle.write(b"new")
    assert target.read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["out.csv"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask  # as open() would make it


# --- a full disk during predict and export -----------------------------------------------------------


class SmallDisk:
    """A folder on a file system with `size` bytes: a tmpfs where this process may mount one, else a
    plain folder whose writers run with RLIMIT_FSIZE = `size` (a write past it fails with EFBIG)."""

    def __init__(self, path: Path, size: int, mounted: bool):
        self.path = path
        self.size = size
        self.mounted = mounted

    def run(self, command: list[str]) -> subprocess.CompletedProcess:
        limit = None if self.mounted else self._limit_file_size
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
        return subprocess.run(command, capture_output=True, text=True, env=env, preexec_fn=limit, timeout=300)

    def _limit_file_size(self) -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # so the write fails with EFBIG, not a signal
        resource.setrlimit(resource.RLIMIT_FSIZE, (self.size, resource.RLIM_INFINITY))


@pytest.fixture(scope="module")
def tmpfs_allowed(tmp_path_factory: pytest.TempPathFactory) -> bool:
    return can_mount_tmpfs(tmp_path_factory.mktemp("mount_probe") / "probe")


@pytest.fixture
def small_disk(tmp_path: Path, tmpfs_allowed: bool) -> Iterator[Callable[[int], SmallDisk]]:
    mounts: list[Path] = []

    def make(size: int) -> SmallDisk:
        path = tmp_path / f"small_disk_{len(mounts)}"
        path.mkdir()
        if tmpfs_allowed:
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
            mounts.append(path)
        return SmallDisk(path, size, tmpfs_allowed)

    yield make
    for path in mounts:
        subprocess.run(["umount", "-l", str(path)], check=True)


def test_full_disk_during_predict(
    small_disk: Callable[[int], SmallDisk],
    real_rows: pd.DataFrame,
    tfidf_model_dir: Path,
    tmp_path: Path,
) -> None:
    disk = small_disk(64 * 1024)
    input_path = write_jsonl(real_rows[["title", "text"]], tmp_path / "reviews.jsonl")
    old = disk.path / "predictions.parquet"  # Parquet: the writer that fails again when closed
    old.write_bytes(b"yesterday's predictions\n")
    command = [str(BIN / "restar"), "predict", "--input", str(input_path), "--output", str(old)]
    done = disk.run([*command, "--model-uri", str(tfidf_model_dir), "--chunk-rows", "500"])

    assert done.returncode == EXIT_OUTPUT, done.stderr[-3000:]
    assert f"cannot write {old}: disk full" in done.stderr
    assert "Traceback" not in done.stderr
    assert old.read_bytes() == b"yesterday's predictions\n"  # the old output stays whole
    assert [p.name for p in disk.path.iterdir()] == [old.name]  # no half-written file


@pytest.fixture
def production_tfidf(tfidf_model_dir: Path, tracking_uri: str) -> int:
    """The TF-IDF model registered as `production` in this test's embedded MLflow store."""
    with mlflow.start_run() as run:
        info = log_pyfunc(tfidf_model_dir)
    version = Registry("restar").register(info.model_uri, run.info.run_id, {}, {}, alias="production")
    return version.version


def test_full_disk_during_export(
    production_tfidf: int, small_disk: Callable[[int], SmallDisk], tmp_path: Path, tmpfs_allowed: bool
) -> None:
    probe = tmp_path / "probe"
    # --force: the fixture set `production` without restar-promote, which the export otherwise refuses
    packing = ["--handler", str(HANDLER), "--model-config", str(MODEL_CONFIG), "--force"]
    first = ["export-torchserve", "--artifacts", str(probe / "a"), "--model-store", str(probe / "m")]
    exported = CliRunner().invoke(restar_cli, [*first, *packing])
    assert exported.exit_code == 0, exported.output
    mar_size = (probe / "m" / "restar.mar").stat().st_size
    disk = small_disk(max(4096, mar_size // 2 // 4096 * 4096))  # too small for the new archive
    artifacts, store = tmp_path / "artifacts", disk.path / "model-store"
    shutil.copytree(probe / "a", artifacts)
    store.mkdir()
    (store / "restar.mar").write_bytes(b"the archive of the previous export")
    before = {"artifacts": files_under(artifacts), "store": files_under(store)}

    command = [str(BIN / "restar"), "export-torchserve", "--artifacts", str(artifacts)]
    done = disk.run([*command, "--model-store", str(store), *packing])

    assert done.returncode == EXIT_OUTPUT, done.stderr[-3000:]
    # tmpfs: the archive write fails; a size limit stops the first large write (the download)
    failed = store / "restar.mar" if tmpfs_allowed else artifacts
    assert f"cannot write {failed}: disk full" in done.stderr
    assert "Traceback" not in done.stderr
    assert {"artifacts": files_under(artifacts), "store": files_under(store)} == before
    assert (store / "restar.mar").read_bytes() == b"the archive of the previous export"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no staging left


# --- every CLI against an unreachable registry -------------------------------------------------------


@pytest.fixture
def unreachable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail_fast: None) -> tuple[Path, str]:
    """A work folder with every input the commands need, and a tracking URI nothing listens on."""
    (port,) = free_ports(1)
    url = f"http://127.0.0.1:{port}"
    work = tmp_path / "work"
    shutil.copytree(REPO_ROOT / "configs", work / "configs")
    for folder in ("run/model", "data", "pretrained", "model"):
        (work / folder).mkdir(parents=True, exist_ok=True)
    (work / "run" / "mlflow_run.json").write_text(json.dumps({"run_id": "r", "model_uri": "models:/m-1"}))
    for name in ("metrics_dev.json", "metrics_eval.json"):
        (work / "run" / name).write_text(json.dumps({"eval_accuracy": 0.9}))
    (work / "data" / "stats.json").write_text(json.dumps({"frozen_content_sha256": "0" * 64, "rows": {}}))
    (work / "run" / "registered.json").write_text(json.dumps({"version": 1}))
    pd.DataFrame({"text": ["Great box", "Arrived broken"]}).to_parquet(work / "data" / "eval.parquet")
    pd.DataFrame({"text": ["Great box", "Arrived broken"]}).to_csv(work / "reviews.csv", index=False)
    monkeypatch.chdir(work)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    monkeypatch.delenv("RESTAR_AUDIT_DB_URL", raising=False)
    return work, url


CI = ["--config", "configs/ci.yaml"]
REGISTRY_COMMANDS = {
    "restar predict": ["predict", "--input", "reviews.csv", "--output", "out/predictions.csv"],
    "restar bench": ["bench", "--model-uri", "models:/restar@production", "--data", "data/eval.parquet"],
    "restar train": ["train", *CI, "--pretrained", "pretrained", "--data", "data", "--out", "out/run"],
    "restar convert": ["convert", *CI, "--checkpoint", "model", "--data", "data", "--out", "run"],
    "restar train-baseline": ["train-baseline", *CI, "--data", "data", "--out", "out/baseline"],
    "restar evaluate": ["evaluate", "--model", "model", "--data", "data", "--out", "run"],
    "restar register": ["register", *CI, "--run-dir", "run", "--data", "data", "--out", "out/reg.json"],
    "restar promote": ["promote", *CI, "--registered", "run/registered.json", "--out", "out/promo.json"],
    "restar export-torchserve": [
        *("export-torchserve", "--artifacts", "out/a", "--model-store", "out/m"),
        *("--handler", str(HANDLER), "--model-config", str(MODEL_CONFIG)),
    ],
    "restar registry list": ["registry", "list"],
    "restar registry describe": ["registry", "describe", "production"],
    "restar registry compare": ["registry", "compare", "1", "2"],
    "restar-promote": ["--version", "1", "--policy", "configs/promotion_ci.yaml"],
    "restar-promote --dry-run": ["--dry-run", "--policy", "configs/promotion_ci.yaml"],
    "restar-promote --rollback": ["--rollback", "--reason", "r", "--policy", "configs/promotion_ci.yaml"],
    "restar-promote status": ["status", "--policy", "configs/promotion_ci.yaml"],
}


@pytest.mark.parametrize("name", list(REGISTRY_COMMANDS))
def test_unreachable_registry_exit_code(name: str, unreachable: tuple[Path, str]) -> None:
    work, url = unreachable
    before = files_under(work)
    cli = promote_cli if name.startswith("restar-promote") else restar_cli
    started = time.monotonic()
    result = CliRunner().invoke(cli, REGISTRY_COMMANDS[name])
    assert result.exit_code == EXIT_REGISTRY, result.output
    assert f"registry at {url} is unreachable" in result.output
    assert files_under(work) == before  # nothing written: no output, no log, no audit database
    assert time.monotonic() - started < 30


def test_unreachable_registry_through_the_console_script(unreachable: tuple[Path, str]) -> None:
    work, url = unreachable
    before = files_under(work)
    command = [str(BIN / "restar-promote"), "status"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == EXIT_REGISTRY, done.stderr
    assert f"registry at {url} is unreachable" in done.stderr
    assert "Traceback" not in done.stderr
    assert files_under(work) == before
