"""
L{StoreThread}: the one thread that owns an accounting store.

Ownership: the store object (and the connection it opens) is touched by this
thread only, from L{StoreThread.start} to L{StoreThread.stop}: it opens it,
runs each job against it, and closes it.  The reactor hands it jobs through
a queue and gets each result back on the reactor thread, through
C{reactor.callFromThread}, as a Deferred's result.  Only the queue and the
Deferreds cross threads; nothing else is shared.

The queue is not bounded here: its one user, the accountant, keeps at most
one batch in it at a time (it merges the next ones in memory meanwhile), so
it holds at most that batch and the stop.

L{StoreThread.call_blocking} is for start-up only, before the reactor runs:
it waits for its job on an C{Event}, and must never run on a running
reactor's thread.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from twisted.internet import defer
from twisted.python.failure import Failure

from .store import AccountingStore

__all__ = ["StoreThread"]

T = TypeVar("T")
S = TypeVar("S", bound=AccountingStore)
Job = tuple[Callable[..., Any], tuple[Any, ...], Callable[[Any], None]]
_STOP = None


class StoreThread(Generic[S]):
    """
    A thread that opens C{store} and runs jobs (C{f(store, *args)}) on it in
    the order given.
    """

    def __init__(self, reactor: Any, store: S, name: str = "socks5twist-accounting") -> None:
        self.reactor = reactor
        self._store = store  # this thread's alone once started (see the module docstring)
        self._jobs: queue.Queue[Job | None] = queue.Queue()
        self._opened = threading.Event()
        self._open_error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._stopped: defer.Deferred[None] | None = None

    @property
    def ident(self) -> int | None:
        """The owner thread's identity (for tests of the discipline)."""
        return self._thread.ident

    def start(self, timeout: float = 30.0) -> None:
        """
        Start the thread and wait (blocking: start-up only) until the store is
        open; raise what opening raised.
        """
        self._thread.start()
        if not self._opened.wait(timeout):
            raise TimeoutError(f"the accounting store did not open within {timeout:g}s")
        if self._open_error is not None:
            error, self._open_error = self._open_error, None
            self._thread.join(timeout)
            raise error

    def call(self, f: Callable[..., T], *args: Any) -> defer.Deferred[T]:
        """Run C{f(store, *args)} in the thread; the result fires on the reactor thread."""
        result: defer.Deferred[T] = defer.Deferred()

        def deliver(outcome: Any) -> None:
            if isinstance(outcome, Failure):
                self.reactor.callFromThread(result.errback, outcome)
            else:
                self.reactor.callFromThread(result.callback, outcome)

        self._jobs.put((f, args, deliver))
        return result

    def call_blocking(self, f: Callable[..., T], *args: Any, timeout: float = 30.0) -> T:
        """
        Run C{f(store, *args)} in the thread and wait for it here (start-up
        only: this thread blocks meanwhile).
        """
        done = threading.Event()
        outcome: list[Any] = []

        def deliver(value: Any) -> None:
            outcome.append(value)
            done.set()

        self._jobs.put((f, args, deliver))
        if not done.wait(timeout):
            raise TimeoutError(f"the accounting store did not answer within {timeout:g}s")
        value = outcome[0]
        if isinstance(value, Failure):
            value.raiseException()
        return value  # type: ignore[no-any-return]

    def stop(self) -> defer.Deferred[None]:
        """
        Let the thread finish the jobs queued, close the store and end; fires
        (on the reactor thread) once it has, the thread joined.
        """
        if self._stopped is None:
            self._stopped = defer.Deferred()
            if not self._thread.is_alive():
                self._stopped.callback(None)
            else:
                self._jobs.put(_STOP)
        return self._stopped

    def _ended(self) -> None:
        self._thread.join()  # its last act was to hand us this call: a short wait
        assert self._stopped is not None
        self._stopped.callback(None)

    # -- the thread --------------------------------------------------------------

    def _run(self) -> None:
        store = self._store
        try:
            store.open()
        except BaseException as e:
            self._open_error = e
            self._opened.set()
            return
        self._opened.set()
        try:
            while True:
                job = self._jobs.get()
                if job is _STOP:
                    break
                f, args, deliver = job
                try:
                    value: Any = f(store, *args)
                except BaseException:
                    value = Failure()
                deliver(value)
        finally:
            try:
                store.close()
            finally:
                self.reactor.callFromThread(self._ended)
