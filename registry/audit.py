"""The promotion audit log: every alias decision, and a per-model lock that serializes promotions.

MLflow keeps no history of alias moves (mlflow/mlflow#2169); this SQLAlchemy database does. Its
schema is versioned: `MIGRATIONS` is applied in order and the applied version is stored, so a new
column is a new migration, never a rebuilt table.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Integer,
    Select,
    String,
    Text,
    create_engine,
    delete,
    inspect,
    select,
    update,
)
from sqlalchemy import text as sql_text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from registry.store import default_audit_url


class Base(DeclarativeBase):
    pass


class SchemaVersion(Base):
    __tablename__ = "restar_audit_schema"

    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    applied_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class AuditRecord(Base):
    """One decision about one alias of one model version."""

    __tablename__ = "restar_promotion_audit"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_name: Mapped[str] = mapped_column(String(256), index=True)
    alias: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer)
    previous_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    action: Mapped[str] = mapped_column(String(32))  # promote | force | rollback | dry_run
    # moved | rejected | aborted | passed | unchanged; pending: a move announced, not yet confirmed
    decision: Mapped[str] = mapped_column(String(32))
    gate_results: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    actor: Mapped[str] = mapped_column(String(256))
    reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)

    def as_dict(self) -> dict[str, Any]:
        return {column.name: getattr(self, column.name) for column in self.__table__.columns}


class PromotionLock(Base):
    """A row exists while someone is moving an alias of `model_name`."""

    __tablename__ = "restar_promotion_lock"

    model_name: Mapped[str] = mapped_column(String(256), primary_key=True)
    holder: Mapped[str] = mapped_column(String(256))
    acquired_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


def _v1_initial(connection: Connection) -> None:
    tables = [AuditRecord.__table__, PromotionLock.__table__]
    Base.metadata.create_all(connection, tables=tables)


# Append only: position i + 1 is schema version i + 1.
MIGRATIONS: list[Callable[[Connection], None]] = [_v1_initial]


# pg_advisory_xact_lock key that serializes migrations of one database ("rsta")
_MIGRATION_LOCK_KEY = 0x72737461
MIGRATION_ATTEMPTS = 20


def _serialize_migrations(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        connection.execute(sql_text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY})


def _applied_version(connection: Connection) -> int:
    if not inspect(connection).has_table(SchemaVersion.__tablename__):
        return 0
    return connection.scalar(select(SchemaVersion.version).order_by(SchemaVersion.version.desc())) or 0


class LockTimeout(Exception):
    """Another promotion of the same model held the lock for too long."""


def utcnow() -> datetime:
    return datetime.now(UTC)


class AuditLog:
    """The audit database at `url` (default: next to the MLflow store), migrated on open."""

    def __init__(self, url: str | None = None):
        self.url = url or default_audit_url()
        connect_args = {"timeout": 30} if self.url.startswith("sqlite") else {}
        self.engine = create_engine(self.url, connect_args=connect_args)
        self.migrate()

    @property
    def schema_version(self) -> int:
        with self.engine.connect() as connection:
            return _applied_version(connection)

    def migrate(self) -> None:
        """Apply the migrations this database has not seen yet, each in its own transaction.

        Processes opening a new database at once may race: on PostgreSQL they take turns (an
        advisory lock; its DDL is transactional). On SQLite, whose driver commits DDL at once, the
        loser of a race (`table ... already exists`, a duplicate version) tries that step again until
        it sees the version the winner recorded."""
        for number, migration in enumerate(MIGRATIONS, start=1):
            for attempt in range(MIGRATION_ATTEMPTS):
                try:
                    self._apply(number, migration)
                    break
                except (IntegrityError, OperationalError):
                    if attempt == MIGRATION_ATTEMPTS - 1:
                        raise
                    time.sleep(0.05 * (attempt + 1))  # a concurrent process is applying it

    def _apply(self, number: int, migration: Callable[[Connection], None]) -> None:
        with self.engine.begin() as connection:
            _serialize_migrations(connection)
            Base.metadata.create_all(connection, tables=[SchemaVersion.__table__])
            if _applied_version(connection) >= number:
                return
            migration(connection)
            connection.execute(SchemaVersion.__table__.insert(), {"version": number, "applied_at": utcnow()})

    def record(self, **fields: Any) -> AuditRecord:
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            row = AuditRecord(created_at=utcnow(), **fields)
            session.add(row)
        return row

    def history(self, model_name: str, limit: int = 20) -> list[AuditRecord]:
        """Newest first."""
        query = (
            select(AuditRecord)
            .where(AuditRecord.model_name == model_name)
            .order_by(AuditRecord.id.desc())
            .limit(limit)
        )
        with Session(self.engine, expire_on_commit=False) as session:
            return list(session.scalars(query))

    def last_move(self, model_name: str, alias: str) -> AuditRecord | None:
        """The most recent record that moved `alias` of `model_name`."""
        query = self._decided(model_name, alias, "moved").order_by(AuditRecord.id.desc()).limit(1)
        with Session(self.engine, expire_on_commit=False) as session:
            return session.scalars(query).first()

    def moves(self, model_name: str, alias: str) -> list[AuditRecord]:
        """Every record that moved `alias` of `model_name`, oldest first."""
        return self._oldest_first(self._decided(model_name, alias, "moved"))

    def pending(self, model_name: str, alias: str) -> list[AuditRecord]:
        """Moves announced but never confirmed (the registry or the process died mid-move), oldest first."""
        return self._oldest_first(self._decided(model_name, alias, "pending"))

    @staticmethod
    def _decided(model_name: str, alias: str, decision: str) -> Select:
        """The records of `alias` of `model_name` with this decision."""
        return select(AuditRecord).where(
            AuditRecord.model_name == model_name,
            AuditRecord.alias == alias,
            AuditRecord.decision == decision,
        )

    def _oldest_first(self, query: Select) -> list[AuditRecord]:
        with Session(self.engine, expire_on_commit=False) as session:
            return list(session.scalars(query.order_by(AuditRecord.id)))

    def settle(self, record_id: int, decision: str, reason: str | None = None) -> None:
        """Give a pending record its outcome (and, optionally, a new reason)."""
        values: dict[str, Any] = {"decision": decision}
        if reason is not None:
            values["reason"] = reason
        with self.engine.begin() as connection:
            connection.execute(update(AuditRecord).where(AuditRecord.id == record_id).values(**values))

    @contextmanager
    def lock(
        self, model_name: str, holder: str, wait_s: float = 60.0, stale_after_s: float = 600.0
    ) -> Iterator[None]:
        """Hold the promotion lock of `model_name`; a lock older than `stale_after_s` is taken over."""
        deadline = time.monotonic() + wait_s
        while not self._try_lock(model_name, holder, stale_after_s):
            if time.monotonic() > deadline:
                raise LockTimeout(f"another promotion of {model_name!r} held the lock for over {wait_s:.0f}s")
            time.sleep(0.1)
        try:
            yield
        finally:
            with self.engine.begin() as connection:
                connection.execute(
                    delete(PromotionLock).where(
                        PromotionLock.model_name == model_name, PromotionLock.holder == holder
                    )
                )

    def _try_lock(self, model_name: str, holder: str, stale_after_s: float) -> bool:
        stale = utcnow() - timedelta(seconds=stale_after_s)
        try:
            with self.engine.begin() as connection:
                connection.execute(
                    delete(PromotionLock).where(
                        PromotionLock.model_name == model_name, PromotionLock.acquired_at < stale
                    )
                )
                connection.execute(
                    PromotionLock.__table__.insert(),
                    {"model_name": model_name, "holder": holder, "acquired_at": utcnow()},
                )
            return True
        except (IntegrityError, OperationalError):  # held by someone else, or SQLite busy: try again
            return False
