"""The feedback database: tables, engine set-up and schema migrations (SQLAlchemy 2).

One schema serves SQLite (the default: a file in WAL mode) and PostgreSQL. JSON columns hold
texts (a string or a list of chat messages) and label values, so one table serves every task
type. Two unique constraints carry the app's guarantees:

* ``assignments (item_id, user_id)``: an item never goes twice to the same annotator;
* ``labels (user_id, client_id)``: a retried submission is stored once (the browser sends
  the same ``client_id`` again, and the second insert finds the first).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    inspect,
    select,
    text,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON, Any: JSON}  # noqa: RUF012


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(80), unique=True)
    role: Mapped[str] = mapped_column(String(16))  # "admin" | "annotator"
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 hex, never the token
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class LoginSession(Base):
    __tablename__ = "sessions"
    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256 of the cookie
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime)


class Campaign(Base):
    __tablename__ = "campaigns"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(120), unique=True)
    task_type: Mapped[str] = mapped_column(String(16))
    guidelines: Mapped[str] = mapped_column(Text, default="")
    k: Mapped[int] = mapped_column(Integer, default=1)  # distinct annotators per item
    render: Mapped[str] = mapped_column(String(16), default="text")  # "text" | "markdown"
    status: Mapped[str] = mapped_column(String(16), default="active")  # active|paused|closed
    settings: Mapped[dict[str, Any]] = mapped_column(default=dict)  # chat sampling settings
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class Item(Base):
    __tablename__ = "items"
    id: Mapped[int] = mapped_column(primary_key=True)
    campaign_id: Mapped[int] = mapped_column(
        ForeignKey("campaigns.id", ondelete="CASCADE"), index=True
    )
    position: Mapped[int] = mapped_column(Integer)  # order of import: items are served in it
    prompt: Mapped[Any] = mapped_column()  # str | list of {"role", "content"}
    responses: Mapped[list[Any]] = mapped_column()  # list of str, original order
    gold: Mapped[Any] = mapped_column(nullable=True)  # hidden answer for quality control
    # line and row indices; a steps item's known final answer (rlhf.feedback.tasks)
    source: Mapped[dict[str, Any]] = mapped_column(default=dict)


class Assignment(Base):
    __tablename__ = "assignments"
    __table_args__ = (UniqueConstraint("item_id", "user_id", name="uq_assignment_item_user"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"))
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    # pending -> done | skipped | expired (a pending one left too long goes back to the pool)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    order: Mapped[list[Any]] = mapped_column()  # display position -> index in item.responses
    skip_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    completed_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)


class Label(Base):
    __tablename__ = "labels"
    __table_args__ = (UniqueConstraint("user_id", "client_id", name="uq_label_client"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    campaign_id: Mapped[int] = mapped_column(
        ForeignKey("campaigns.id", ondelete="CASCADE"), index=True
    )
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"), index=True)
    assignment_id: Mapped[int] = mapped_column(ForeignKey("assignments.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    client_id: Mapped[str] = mapped_column(String(64))
    turn: Mapped[int] = mapped_column(Integer, default=0)  # chat: the turn picked; else 0
    # the value in the item's original response order (see rlhf.feedback.tasks)
    value: Mapped[dict[str, Any]] = mapped_column()
    seconds: Mapped[float] = mapped_column(Float)  # from assignment (or last turn) to label
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class ChatTurn(Base):
    """One turn of a chat task: the conversation so far and two candidate replies."""

    __tablename__ = "chat_turns"
    __table_args__ = (UniqueConstraint("assignment_id", "index", name="uq_chat_turn"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    assignment_id: Mapped[int] = mapped_column(
        ForeignKey("assignments.id", ondelete="CASCADE"), index=True
    )
    index: Mapped[int] = mapped_column(Integer)
    client_id: Mapped[str] = mapped_column(String(64))
    messages: Mapped[list[Any]] = mapped_column()  # the conversation up to this user turn
    candidates: Mapped[list[Any]] = mapped_column()  # two replies, original order
    order: Mapped[list[Any]] = mapped_column()  # display position -> candidate index
    chosen: Mapped[int | None] = mapped_column(Integer, nullable=True)  # candidate index
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class Loop(Base):
    """An ``rlhf loop`` run whose rounds label through this app (the loop's own bookkeeping:
    the app shows it on the admin page; the labels live in each round's campaign)."""

    __tablename__ = "loops"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(120), unique=True)
    out: Mapped[str] = mapped_column(Text)  # the run folder
    settings: Mapped[dict[str, Any]] = mapped_column(default=dict)  # what the admin page shows
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class LoopRound(Base):
    """One round of a loop: waiting (for an admin to start it) -> sampling -> labelling (its
    campaign made) -> training (its labels exported) -> done (its summary written)."""

    __tablename__ = "loop_rounds"
    __table_args__ = (UniqueConstraint("loop_id", "number", name="uq_loop_round"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    loop_id: Mapped[int] = mapped_column(ForeignKey("loops.id", ondelete="CASCADE"), index=True)
    number: Mapped[int] = mapped_column(Integer)  # 1, 2, ...
    status: Mapped[str] = mapped_column(String(16), default="waiting")
    campaign_id: Mapped[int | None] = mapped_column(
        ForeignKey("campaigns.id", ondelete="SET NULL"), nullable=True
    )
    summary: Mapped[dict[str, Any]] = mapped_column(default=dict)  # labels, RM accuracy, ...
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)


class SchemaVersion(Base):
    __tablename__ = "schema_version"
    version: Mapped[int] = mapped_column(Integer, primary_key=True)


# Migrations: MIGRATIONS[v - 1] takes a database at schema version v to v + 1. The schema
# above is the newest; a later change to the tables appends a step here and bumps nothing else.
def _add_loop_tables(connection: Any) -> None:
    """Version 1 -> 2: the tables of ``rlhf loop`` runs."""
    Base.metadata.create_all(connection, tables=[Loop.__table__, LoopRound.__table__])


MIGRATIONS: list[Callable[[Any], None]] = [_add_loop_tables]
SCHEMA_VERSION = 1 + len(MIGRATIONS)


class SchemaError(RuntimeError):
    """The database holds a schema this version of rlhf cannot use."""


def database_url(db: str) -> str:
    """A SQLAlchemy URL from ``--db``: a URL as given, or a file path for SQLite."""
    if "://" in db:
        return db
    return f"sqlite:///{Path(db).expanduser().resolve()}"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL: readers never block the writer. synchronous=FULL: a commit is on disk before the
    # app acknowledges it, so a label acknowledged is a label kept, even on power loss.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _sqlite_begin_immediate(connection: Any) -> None:
    # Take the write lock when a transaction starts, not at its first write: two annotators
    # asking for work at once then queue instead of both reading "item 7 needs one more
    # annotator" and both taking it (SQLite has no SELECT ... FOR UPDATE).
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(url: str) -> Engine:
    """An engine for ``url`` with the settings the app relies on."""
    if url.startswith("sqlite"):
        if url in ("sqlite://", "sqlite:///:memory:"):
            raise SchemaError("an in-memory SQLite database would lose every label; give a file")
        path = url.split("///", 1)[-1]
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30, "isolation_level": None}
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin_immediate)
        return engine
    try:
        return create_engine(url, pool_size=20, max_overflow=20, pool_pre_ping=True)
    except ModuleNotFoundError as error:
        raise SchemaError(
            f"the database driver for {url.split('://')[0]} is not installed ({error.name}); "
            "for PostgreSQL use postgresql+psycopg://... after pip install 'rlhf[postgres]'"
        ) from error


def migrate(engine: Engine) -> int:
    """Create the schema in an empty database, or bring an older one up to date.

    Returns the version the database was at (0 for a new one).
    """
    with engine.begin() as connection:
        tables = set(inspect(connection).get_table_names())
        if "schema_version" not in tables:
            if tables & set(Base.metadata.tables):
                raise SchemaError(
                    "the database has feedback tables but no schema_version table; "
                    "it was not made by rlhf feedback"
                )
            Base.metadata.create_all(connection)
            connection.execute(SchemaVersion.__table__.insert().values(version=SCHEMA_VERSION))
            return 0
        found = connection.execute(select(SchemaVersion.version)).scalar_one()
        if found > SCHEMA_VERSION:
            raise SchemaError(
                f"the database is at schema version {found}, newer than this rlhf "
                f"understands ({SCHEMA_VERSION}); upgrade rlhf"
            )
        for version in range(found, SCHEMA_VERSION):
            MIGRATIONS[version - 1](connection)
            connection.execute(text("UPDATE schema_version SET version = :v"), {"v": version + 1})
        return found


def session_factory(engine: Engine) -> sessionmaker:
    return sessionmaker(engine, expire_on_commit=False)
