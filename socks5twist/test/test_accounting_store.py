"""
The accounting store and its thread: the SQLite file as an operator reads
it, totals added atomically, and one thread that owns the store.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase, TestCase

from socks5twist.accounting import SQLiteStore, StoreError, Usage
from socks5twist.accounting.store import SCHEMA_VERSION, periods_of
from socks5twist.accounting.writer import StoreThread

DAY, MONTH, TOTAL = "2026-12-01", "2026-12", "total"

# The README's queries, run as an operator would.
USAGE_THIS_MONTH = """
SELECT key, bytes_up + bytes_down AS bytes, sessions
FROM usage WHERE period = ? ORDER BY bytes DESC
"""


class SQLiteStoreTests(SynchronousTestCase):
    def open(self, path: str | None = None) -> SQLiteStore:
        store = SQLiteStore(path or self.path)
        store.open()
        self.addCleanup(store.close)
        return store

    def setUp(self) -> None:
        self.path = self.mktemp()

    def test_add_returns_the_new_totals_and_load_reads_them_back(self) -> None:
        store = self.open()
        first = {("user:alice", DAY): Usage(10, 20, 1), ("user:alice", TOTAL): Usage(10, 20, 1)}
        self.assertEqual(store.add(first), first)
        again = store.add({("user:alice", DAY): Usage(1, 2, 1), ("ip:10.0.0.7", DAY): Usage(5)})
        self.assertEqual(
            again, {("user:alice", DAY): Usage(11, 22, 2), ("ip:10.0.0.7", DAY): Usage(5, 0, 0)}
        )
        self.assertEqual(
            store.load([DAY, MONTH]),
            {("user:alice", DAY): Usage(11, 22, 2), ("ip:10.0.0.7", DAY): Usage(5, 0, 0)},
        )

    def test_totals_survive_closing_and_reopening(self) -> None:
        store = SQLiteStore(self.path)
        store.open()
        store.add({("user:alice", MONTH): Usage(1 << 30, 5, 3)})
        store.close()
        self.assertEqual(self.open().load([MONTH]), {("user:alice", MONTH): Usage(1 << 30, 5, 3)})

    def test_an_operator_reads_the_file_with_plain_sql_while_it_is_open(self) -> None:
        store = self.open()
        store.add({("user:alice", MONTH): Usage(300, 700, 2), ("user:bob", MONTH): Usage(1, 1, 1)})
        with sqlite3.connect(self.path) as operator:
            rows = operator.execute(USAGE_THIS_MONTH, (MONTH,)).fetchall()
        self.assertEqual(rows, [("user:alice", 1000, 2), ("user:bob", 2, 1)])
        # The operator's connection held no lock: the server still writes.
        store.add({("user:bob", MONTH): Usage(1)})

    def test_two_stores_on_one_file_add_to_the_same_totals(self) -> None:
        """What two workers sharing a file see: each add returns both's sum."""
        one, other = self.open(), self.open()
        one.add({("user:alice", TOTAL): Usage(100)})
        self.assertEqual(
            other.add({("user:alice", TOTAL): Usage(1)}), {("user:alice", TOTAL): Usage(101)}
        )

    def test_a_failed_batch_adds_nothing(self) -> None:
        store = self.open()
        store.add({("user:alice", DAY): Usage(5)})
        with self.assertRaises(OverflowError):  # the second row cannot be stored
            store.add({("user:alice", DAY): Usage(1), ("user:bob", DAY): Usage(1 << 64)})
        self.assertEqual(store.load([DAY]), {("user:alice", DAY): Usage(5)})

    def test_a_file_of_a_newer_schema_is_refused_in_one_line(self) -> None:
        with sqlite3.connect(self.path) as db:
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        with self.assertRaises(StoreError) as caught:
            SQLiteStore(self.path).open()
        self.assertIn(
            f"sqlite:{self.path} has schema version {SCHEMA_VERSION + 1}", str(caught.exception)
        )

    def test_a_file_that_cannot_be_opened_is_refused_in_one_line(self) -> None:
        os.mkdir(self.path)
        with self.assertRaises(StoreError) as caught:
            SQLiteStore(os.path.join(self.path, "missing", "a.db")).open()
        self.assertIn("cannot open sqlite:", str(caught.exception))

    def test_periods_are_utc_day_month_and_total(self) -> None:
        # 2026-12-31 23:59:59 UTC, and one second later.
        self.assertEqual(periods_of(1798761599), ("2026-12-31", "2026-12", "total"))
        self.assertEqual(periods_of(1798761600), ("2027-01-01", "2027-01", "total"))


class RecordingStore:
    """A store that notes which thread runs each of its methods."""

    description = "recording"

    def __init__(self) -> None:
        self.threads: list[tuple[str, int]] = []
        self.added: list[Any] = []

    def _note(self, what: str) -> None:
        self.threads.append((what, threading.get_ident()))

    def open(self) -> None:
        self._note("open")

    def load(self, periods: Any) -> dict[Any, Usage]:
        self._note("load")
        return {("user:alice", TOTAL): Usage(7)}

    def add(self, batch: Any) -> dict[Any, Usage]:
        self._note("add")
        if batch == "boom":
            raise ValueError("boom")
        self.added.append(batch)
        return dict(batch)

    def close(self) -> None:
        self._note("close")


class StoreThreadTests(TestCase):
    """One thread owns the store: it alone opens, uses and closes it."""

    @defer.inlineCallbacks
    def test_every_use_of_the_store_is_on_its_one_thread(self) -> Any:
        from twisted.internet import reactor

        store = RecordingStore()
        thread = StoreThread(reactor, store)
        thread.start()
        self.assertEqual(
            thread.call_blocking(lambda s, p: s.load(p), [TOTAL]), {("user:alice", TOTAL): Usage(7)}
        )
        delivered_on: list[int] = []

        def add(s: Any, batch: Any) -> Any:
            return s.add(batch)

        def note(result: Any) -> Any:
            delivered_on.append(threading.get_ident())
            return result

        result = yield thread.call(add, {("user:alice", DAY): Usage(1)}).addCallback(note)
        self.assertEqual(result, {("user:alice", DAY): Usage(1)})
        with self.assertRaises(ValueError):
            yield thread.call(add, "boom")
        yield thread.stop()
        self.assertFalse(thread._thread.is_alive())  # joined
        self.assertEqual(
            [what for what, _ in store.threads], ["open", "load", "add", "add", "close"]
        )
        owners = {ident for _, ident in store.threads}
        self.assertEqual(owners, {thread.ident})
        self.assertNotEqual(thread.ident, threading.get_ident())
        # Results come back on the reactor's thread.
        self.assertEqual(delivered_on, [threading.get_ident()])

    @defer.inlineCallbacks
    def test_sqlite_refuses_its_connection_to_any_other_thread(self) -> Any:
        """The discipline is enforced, not hoped for: sqlite3 checks the thread."""
        from twisted.internet import reactor

        store = SQLiteStore(self.mktemp())
        thread = StoreThread(reactor, store)
        thread.start()
        try:
            with self.assertRaises(sqlite3.ProgrammingError):
                store.add({("user:alice", DAY): Usage(1)})
            totals = yield thread.call(lambda s, b: s.add(b), {("user:alice", DAY): Usage(1)})
            self.assertEqual(totals, {("user:alice", DAY): Usage(1)})
        finally:
            yield thread.stop()

    def test_a_store_that_cannot_open_stops_the_start(self) -> None:
        from twisted.internet import reactor

        os.mkdir(self.mktemp())
        store = SQLiteStore(os.path.join(self.mktemp(), "missing", "a.db"))
        thread = StoreThread(reactor, store)
        with self.assertRaises(StoreError):
            thread.start()
        self.assertFalse(thread._thread.is_alive())
