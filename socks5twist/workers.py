"""
C{--workers N}: N processes serving the same listening sockets.

The first process (the one twistd started) listens as usual, then starts
N - 1 more copies of itself that inherit its listening sockets and adopt them
(C{adoptStreamPort}); the kernel hands each new connection to whichever
process accepts first.  Any endpoint kind that yields a listening socket
works this way (C{tcp:}, C{tcp6:}, C{unix:}, C{haproxy:} over those).

The first process supervises: it passes on SIGHUP (reload) and SIGTERM
(stop), re-emits each worker's log events in its own log, with the worker's
PID (a worker logs Twisted's JSON events to its standard output, with
L{socks5twist.logs.worker_observer}, so that each line is formatted once, with
one timestamp, and a JSON log keeps a worker's fields), restarts a
worker that dies unexpectedly (after a second, so a crash loop cannot spin),
and on stop waits for the workers to finish their own graceful shutdown.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from twisted.internet import defer, error, protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from .logs import relay_worker_line

log = Logger()

TWISTD = "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()"
WORKER_LOGGER = "--logger=socks5twist.logs.worker_observer"


class _Worker(protocol.ProcessProtocol):
    def __init__(self, pool: WorkerPool, index: int) -> None:
        self.pool = pool
        self.index = index
        self.ended: defer.Deferred[None] = defer.Deferred()
        self.ready = False  # it has said it listens, so its signal handlers are in place
        # The unfinished line of each descriptor (stdout and stderr are two
        # pipes: a line of one must not be finished by the other's bytes).
        self._partial: dict[int, bytes] = {}

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        lines = (self._partial.get(childFD, b"") + data).split(b"\n")
        self._partial[childFD] = lines.pop()
        pid = self.transport.pid if self.transport else 0  # type: ignore[attr-defined]
        for line in lines:
            if not line.strip():
                continue
            event = relay_worker_line(log, pid, line)
            if event is not None and event["log_format"].endswith("] listening on {ports}"):
                self.ready = True

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(None)
        self.pool.worker_ended(self, reason)


class WorkerPool:
    """The extra worker processes of one server."""

    def __init__(
        self,
        reactor: Any,
        count: int,
        argv: Sequence[str],
        listeners: Sequence[tuple[int, str]],
        stop_timeout: float,
    ) -> None:
        self.reactor = reactor
        self.count = count
        self.argv = list(argv)
        self.listeners = list(listeners)
        self.stop_timeout = stop_timeout
        self.workers: dict[int, _Worker] = {}
        self.stopping = False

    def start(self) -> None:
        for index in range(self.count):
            self._spawn(index)

    def _spawn(self, index: int) -> None:
        worker = _Worker(self, index)
        args = [sys.executable, "-c", TWISTD, "-n", "--pidfile=", WORKER_LOGGER, "socks5"]
        args += self.argv
        child_fds: dict[int, int | str] = {0: "w", 1: "r", 2: "r"}
        for fd, description in self.listeners:
            args += ["--worker-listener", f"{fd}:{description}"]
            child_fds[fd] = fd
        env = dict(os.environ)
        self.reactor.spawnProcess(worker, sys.executable, args, env=env, childFDs=child_fds)
        self.workers[index] = worker
        log.info(
            "started worker {index} (pid {pid})",
            index=index + 1,
            pid=worker.transport.pid,  # type: ignore[union-attr]
        )

    def worker_ended(self, worker: _Worker, reason: Failure) -> None:
        if self.workers.get(worker.index) is worker:
            del self.workers[worker.index]
        if self.stopping:
            return
        log.warn(
            "worker {index} ended unexpectedly ({reason}); restarting it in 1s",
            index=worker.index + 1,
            reason=reason.getErrorMessage(),
        )
        self.reactor.callLater(1, self._respawn, worker.index)

    def _respawn(self, index: int) -> None:
        if not self.stopping and index not in self.workers:
            self._spawn(index)

    def signal(self, signum: int) -> None:
        """
        Pass a signal on to every worker.  SIGHUP goes only to workers that
        are ready (one still starting reads the new rules file anyway, and
        SIGHUP's default action would end it).
        """
        for worker in list(self.workers.values()):
            if signum == signal.SIGHUP and not worker.ready:
                continue
            try:
                worker.transport.signalProcess(signum)  # type: ignore[union-attr]
            except error.ProcessExitedAlready:
                pass

    def stop(self) -> defer.Deferred[Any]:
        """SIGTERM every worker and wait (then SIGKILL) until all have ended."""
        self.stopping = True
        ended = [w.ended for w in self.workers.values()]
        self.signal(signal.SIGTERM)
        killer = self.reactor.callLater(self.stop_timeout, self.signal, signal.SIGKILL)

        def done(result: object) -> object:
            if killer.active():
                killer.cancel()
            return result

        return defer.DeferredList(ended).addBoth(done)
