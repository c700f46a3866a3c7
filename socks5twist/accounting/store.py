"""
Where used amounts are kept: the L{AccountingStore} interface, and
L{SQLiteStore}, the one that C{--accounting sqlite:PATH} opens.

A store counts, per I{cell} (a key such as C{user:alice} or C{ip:10.0.0.7},
and a period such as C{2026-12-01}, C{2026-12} or C{total}), bytes up, bytes
down and sessions.  Its methods block: they are called only by the store's
own thread (L{socks5twist.accounting.writer}), never by the reactor.  What
another store (Redis, for a fleet) must promise is what L{AccountingStore}
says: L{AccountingStore.add} adds a batch and returns the new totals of the
cells it touched, atomically per cell, so that several processes sharing
one store each learn what all of them used.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Protocol

from ..logsafe import without_password

__all__ = [
    "SCHEMA",
    "AccountingStore",
    "Cell",
    "SQLiteStore",
    "StoreError",
    "Usage",
    "periods_of",
]


class StoreError(Exception):
    """A store that cannot be opened or used (its message names it)."""


@dataclass(frozen=True, slots=True)
class Usage:
    """Bytes up (from clients), bytes down (to them) and sessions started."""

    up: int = 0
    down: int = 0
    sessions: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(self.up + other.up, self.down + other.down, self.sessions + other.sessions)

    @property
    def bytes(self) -> int:
        """Both directions: what a quota counts."""
        return self.up + self.down


# (key, period): whose counters, and for which period.
Cell = tuple[str, str]
NOTHING = Usage()


def periods_of(now: float) -> tuple[str, str, str]:
    """
    The periods C{now} counts in, as the store names them: its UTC day
    (C{2026-12-01}), its UTC month (C{2026-12}) and C{total}.  Every key is
    counted in all three, so an operator's queries work whatever quotas say.
    """
    t = time.gmtime(now)
    return (
        f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}",
        f"{t.tm_year:04d}-{t.tm_mon:02d}",
        "total",
    )


class AccountingStore(Protocol):
    """
    What the accounting needs of a store.  Every method may block and is
    called from one thread only (the store's own): an implementation needs
    no lock of its own, and may rely on it (a C{sqlite3} connection does).
    """

    @property
    def description(self) -> str:
        """How the logs name the store (C{sqlite:/var/lib/socks5/accounting.db})."""

    def open(self) -> None:
        """Connect, create what is missing; raise L{StoreError} with one line."""

    def load(self, periods: Collection[str]) -> dict[Cell, Usage]:
        """The totals of every key in C{periods} (at start-up)."""

    def add(self, batch: Mapping[Cell, Usage]) -> dict[Cell, Usage]:
        """
        Add C{batch} to the stored totals, all or nothing, each cell
        atomically (other processes may add to the same cells), and return
        the new totals of the cells in C{batch}.
        """

    def close(self) -> None:
        """Let go of the store (after the last L{add})."""


SCHEMA_VERSION = 1
SCHEMA = """\
CREATE TABLE IF NOT EXISTS usage (
    key        TEXT    NOT NULL,           -- 'user:alice', or 'ip:10.0.0.7' without a login
    period     TEXT    NOT NULL,           -- '2026-12-01' (UTC day), '2026-12' (UTC month), 'total'
    bytes_up   INTEGER NOT NULL DEFAULT 0, -- from the clients
    bytes_down INTEGER NOT NULL DEFAULT 0, -- to the clients
    sessions   INTEGER NOT NULL DEFAULT 0, -- requests admitted
    updated    TEXT    NOT NULL,           -- UTC, 'YYYY-MM-DD HH:MM:SS', of the last write
    PRIMARY KEY (key, period)
) WITHOUT ROWID"""

_ADD = """\
INSERT INTO usage (key, period, bytes_up, bytes_down, sessions, updated)
VALUES (?, ?, ?, ?, ?, strftime('%Y-%m-%d %H:%M:%S', 'now'))
ON CONFLICT (key, period) DO UPDATE SET
    bytes_up = bytes_up + excluded.bytes_up,
    bytes_down = bytes_down + excluded.bytes_down,
    sessions = sessions + excluded.sessions,
    updated = excluded.updated
RETURNING bytes_up, bytes_down, sessions"""


class SQLiteStore:
    """
    One SQLite file (C{--accounting sqlite:PATH}), in WAL mode so that an
    operator's C{sqlite3} reads never wait for the server's writes, nor the
    writes for them.  The connection is made by L{open}, in the store's
    thread, and C{sqlite3} refuses its use from any other thread.

    @param busy_timeout: seconds a write waits for another process's
        (another worker's, an operator's) write lock.
    """

    def __init__(self, path: str, busy_timeout: float = 5.0) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        self._db: sqlite3.Connection | None = None

    @property
    def description(self) -> str:
        return f"sqlite:{self.path}"

    def open(self) -> None:
        try:
            db = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None)
        except sqlite3.Error as e:
            raise StoreError(f"cannot open {self.description}: {e}") from None
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.description} has schema version {version}, newer than this"
                    f" server's ({SCHEMA_VERSION})"
                )
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")
            db.execute(SCHEMA)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except sqlite3.Error as e:
            db.close()
            raise StoreError(f"cannot use {self.description}: {e}") from None
        except StoreError:
            db.close()
            raise
        self._db = db

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError(f"{self.description} is not open")
        return self._db

    def load(self, periods: Collection[str]) -> dict[Cell, Usage]:
        db = self._connection()
        marks = ", ".join("?" for _ in periods)
        rows = db.execute(
            "SELECT key, period, bytes_up, bytes_down, sessions FROM usage"
            f" WHERE period IN ({marks})",
            tuple(periods),
        )
        return {(key, period): Usage(up, down, n) for key, period, up, down, n in rows}

    def add(self, batch: Mapping[Cell, Usage]) -> dict[Cell, Usage]:
        db = self._connection()
        totals: dict[Cell, Usage] = {}
        # IMMEDIATE: take the write lock first, so a busy file makes this
        # wait (busy_timeout) instead of failing halfway.
        db.execute("BEGIN IMMEDIATE")
        try:
            for (key, period), usage in batch.items():
                row = db.execute(
                    _ADD, (key, period, usage.up, usage.down, usage.sessions)
                ).fetchone()
                totals[(key, period)] = Usage(*row)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return totals

    def close(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            db.close()


def parse_accounting(text: str) -> AccountingStore:
    """
    The store that C{--accounting} names: C{sqlite:PATH}, or
    C{redis://[:PASSWORD@]HOST:PORT/DB} for a fleet
    (L{socks5twist.accounting.redisstore}).  Raises C{ValueError} with one
    line naming what is wrong (never a password); the store itself is
    opened later, by its thread.
    """
    if text.startswith("redis://"):
        from .redisstore import parse_redis_url

        return parse_redis_url(text)
    kind, colon, rest = text.partition(":")
    if kind == "sqlite" and colon and rest:
        directory = os.path.dirname(os.path.abspath(rest)) or "."
        if not os.path.isdir(directory):
            raise ValueError(f"--accounting {text}: no directory {directory}")
        if os.path.isdir(rest):
            raise ValueError(f"--accounting {text}: {rest} is a directory, not a file")
        return SQLiteStore(rest)
    raise ValueError(
        "--accounting takes sqlite:PATH (e.g. sqlite:/var/lib/socks5twist/accounting.db)"
        f" or redis://[:PASSWORD@]HOST:PORT/DB, not {without_password(text)!r}"
    )
