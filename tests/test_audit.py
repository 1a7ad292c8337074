"""The audit log and its promotion lock on each backend: SQLite files and a real PostgreSQL server."""

import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select, update

from registry.audit import (
    MIGRATIONS,
    AuditLog,
    AuditRecord,
    LockTimeout,
    PromotionLock,
    SchemaVersion,
    utcnow,
)

DATA = Path(__file__).parent / "data"


def backend(url: str) -> str:
    return url.split(":", 1)[0].split("+", 1)[0]


def restore(url: str, dump: Path) -> None:
    """Run a SQL dump (tests/data) into the empty database at `url`, as its own tools would."""
    engine = create_engine(url)
    raw = engine.raw_connection()
    try:
        if backend(url) == "sqlite":
            raw.driver_connection.executescript(dump.read_text())
        else:
            with raw.cursor() as cursor:
                cursor.execute(dump.read_text())
            raw.commit()
    finally:
        raw.close()
        engine.dispose()  # pg_dump's preamble changed this session's search_path


def test_schema_is_versioned_and_history_survives_reopening(database_url: str) -> None:
    log = AuditLog(database_url)
    assert log.schema_version == len(MIGRATIONS)
    log.record(
        model_name="restar",
        alias="production",
        version=1,
        previous_version=None,
        action="promote",
        decision="moved",
        gate_results=[{"gate": "accuracy", "passed": True}],
        actor="me",
        reason="",
    )
    reopened = AuditLog(database_url)
    assert reopened.schema_version == len(MIGRATIONS)
    (row,) = reopened.history("restar")
    assert row.gate_results == [{"gate": "accuracy", "passed": True}]
    assert reopened.last_move("restar", "production").version == 1
    assert reopened.last_move("other", "production") is None


def test_release_database_upgrades_keeping_its_rows(database_url: str) -> None:
    """An audit database the current release wrote (schema v1, three rows) opens, migrates to the newest
    version and keeps every row; opening it again changes nothing."""
    restore(database_url, DATA / f"audit_v1.{backend(database_url)}.sql")
    log = AuditLog(database_url)
    assert log.schema_version == len(MIGRATIONS)
    rows = log.history("restar")
    assert [(r.id, r.action, r.decision, r.version) for r in rows] == [
        (3, "force", "pending", 2),
        (2, "promote", "rejected", 2),
        (1, "promote", "moved", 1),
    ]
    assert rows[1].gate_results[0] == {"gate": "accuracy", "passed": False, "value": 0.62, "threshold": 0.7}
    assert rows[0].reason == 'hotfix: l\'été "quoted"'
    (pending,) = log.pending("restar", "production")
    log.settle(pending.id, "aborted")
    new = log.record(
        model_name="restar",
        alias="production",
        version=1,
        previous_version=1,
        action="promote",
        decision="unchanged",
        gate_results=[],
        actor="me",
        reason="",
    )
    assert new.id == 4  # the id sequence continues after the restored rows
    AuditLog(database_url)
    with log.engine.connect() as connection:
        assert connection.scalar(select(func.count()).select_from(SchemaVersion)) == len(MIGRATIONS)
        assert connection.scalar(select(func.count()).select_from(AuditRecord)) == 4
    assert log.last_move("restar", "production").version == 1


def test_concurrent_first_opens_migrate_once(database_url: str) -> None:
    """Eight processes' worth of connections opening one new database at the same moment."""
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def open_log() -> None:
        barrier.wait()
        try:
            AuditLog(database_url).engine.dispose()
        except Exception as error:
            errors.append(error)

    threads = [threading.Thread(target=open_log) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    log = AuditLog(database_url)
    assert log.schema_version == len(MIGRATIONS)
    with log.engine.connect() as connection:
        assert connection.scalar(select(func.count()).select_from(SchemaVersion)) == len(MIGRATIONS)


def test_lock_serializes_holders(database_url: str) -> None:
    log = AuditLog(database_url)
    inside, overlaps = [], []

    def hold(name: str) -> None:
        with log.lock("restar", name, wait_s=30):
            if inside:
                overlaps.append(name)
            inside.append(name)
            time.sleep(0.05)
            inside.remove(name)

    threads = [threading.Thread(target=hold, args=(f"t{i}",)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert overlaps == []


def test_lock_times_out_and_stale_locks_are_taken_over(database_url: str) -> None:
    log = AuditLog(database_url)
    with log.lock("restar", "first"), pytest.raises(LockTimeout), log.lock("restar", "second", wait_s=0.3):
        pass
    with log.lock("restar", "crashed"):
        with log.engine.begin() as connection:  # pretend the holder died an hour ago
            connection.execute(update(PromotionLock).values(acquired_at=utcnow() - timedelta(hours=1)))
        with log.lock("restar", "rescuer", wait_s=1, stale_after_s=60):
            pass
