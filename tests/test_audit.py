import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from registry.audit import MIGRATIONS, AuditLog, LockTimeout, PromotionLock, utcnow


def test_schema_is_versioned_and_history_survives_reopening(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    log = AuditLog(url)
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
    reopened = AuditLog(url)
    assert reopened.schema_version == len(MIGRATIONS)
    (row,) = reopened.history("restar")
    assert row.gate_results == [{"gate": "accuracy", "passed": True}]
    assert reopened.last_move("restar", "production").version == 1
    assert reopened.last_move("other", "production") is None


def test_lock_serializes_holders(tmp_path: Path) -> None:
    log = AuditLog(f"sqlite:///{tmp_path / 'audit.db'}")
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


def test_lock_times_out_and_stale_locks_are_taken_over(tmp_path: Path) -> None:
    log = AuditLog(f"sqlite:///{tmp_path / 'audit.db'}")
    with log.lock("restar", "first"), pytest.raises(LockTimeout), log.lock("restar", "second", wait_s=0.3):
        pass
    with log.lock("restar", "crashed"):
        with log.engine.begin() as connection:  # pretend the holder died an hour ago
            connection.execute(update(PromotionLock).values(acquired_at=utcnow() - timedelta(hours=1)))
        with log.lock("restar", "rescuer", wait_s=1, stale_after_s=60):
            pass
