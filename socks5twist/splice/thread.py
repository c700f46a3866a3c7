"""
The relay thread of a reactor: one C{epoll} set holding the sockets of the
splice tunnels that have moved here, and a plain loop that moves their
bytes.

Why a thread: the reactor passes each readiness event through its main loop
and its logging context, which costs about 14 µs of Python per round trip
through a tunnel, more than everything the relay itself does (a plain
C{epoll} loop dispatches the same events for about 5 µs).  Here the events
of every open tunnel go straight from C{epoll} to the pumps.  The reactor
thread keeps everything else: accepting, negotiating, connecting, timers and
logs; it hands a tunnel over after its first round trips and gets the
transports back when the tunnel ends.  The two threads share the GIL, but
every socket operation releases it, so while one thread is in the kernel
the other runs.

Which thread may touch what, and how a tunnel changes hands, is the
package's ownership protocol (L{socks5twist.splice}); this module keeps the
thread's side of it: the reactor reaches the thread only through L{call}
(a queue and an C{eventfd}), the thread reaches the reactor only through
L{hand_back} (a queue, emptied by one C{callFromThread}), and both queues,
the set of tunnels and the thread's L{ThreadState} are under the reactor's
splice lock, nowhere else.

The thread lives while tunnels are open and for L{RelayThread.LINGER}
seconds after the last one ends, so an idle server holds no thread or
descriptor of the relay's, and a busy one does not start a thread per
tunnel.  Whatever way it ends, the thread ends the tunnels it still holds
itself (they are its own) and closes its C{epoll} set and C{eventfd}; the
transports go back to the reactor like any others.  When the reactor shuts
down it asks the thread to stop and joins it (L{RelayThread.stop}), then
closes the transports the thread handed back; if the thread has not ended
within L{RelayThread.JOIN_TIMEOUT}, the reactor leaves its tunnels and
descriptors alone (they are still the thread's) and logs one line.
"""

from __future__ import annotations

import enum
import heapq
import itertools
import os
import select
import signal
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger
from twisted.python.failure import Failure

from .poller import HUP, IN, OUT, mask_of
from .pump import AGAIN, End

if TYPE_CHECKING:
    from .relay import SpliceRelay

log = Logger()

_SIGNALS = {
    getattr(signal, name)
    for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGCHLD", "SIGUSR1", "SIGUSR2", "SIGALRM")
    if hasattr(signal, name)
}


class ThreadState(enum.Enum):
    """Where a relay thread is in its life (under the lock)."""

    RUNNING = "running"  # takes tunnels and steps
    STOPPING = "stopping"  # asked to stop by the reactor, which is joining it
    ENDED = "ended"  # has ended its tunnels and closed its descriptors (or is about to)
    ABANDONED = "abandoned"  # did not end within the join's timeout: left alone


class RelayThread:
    """
    One thread and its C{epoll} set, for the tunnels of one reactor that
    have moved off it.  The scheduler of those tunnels (L{watch}).
    """

    BATCH = 256
    LINGER = 1.0  # seconds without a tunnel before the thread ends
    JOIN_TIMEOUT = 5.0  # seconds the reactor waits for the thread at shutdown

    def __init__(self, reactor: Any, lock: threading.Lock) -> None:
        # Guards, for both threads: state, relays, _inbox, _outbox, _posted
        # (and the pumps' byte counts: see socks5twist.splice).
        self.lock = lock
        self.state = ThreadState.RUNNING
        self.relays: set[SpliceRelay] = set()  # moved here and not yet handed back
        self._inbox: list[Callable[[], None]] = []  # reactor → thread
        self._outbox: list[tuple[SpliceRelay, bool]] = []  # thread → reactor
        self._posted = False  # a give_back is queued in the reactor
        # The thread's own (set here, before it starts):
        self.ends: dict[int, End] = {}
        self._reactor: Any = reactor  # dropped when the thread ends
        self._epoll = select.epoll()
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._epoll.register(self._wake, IN)
        self._quitting = False
        self._handed_any = False  # hand_back was called in this batch
        # Steps to run later (a throttled pump's: see socks5twist.shaping),
        # by when (time.monotonic), in order.
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._sequence = itertools.count()
        self._thread = threading.Thread(target=self._run, name="socks5twist splice", daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        with self.lock:
            return self.state is ThreadState.RUNNING

    @property
    def alive(self) -> bool:
        """Whether the thread has not ended yet (whatever its state says)."""
        return self._thread.is_alive()

    # -- from the reactor thread ------------------------------------------------

    def call(self, step: Callable[[], None]) -> None:
        """
        Run C{step} in the relay thread.  Once the thread is no longer
        running, C{step} is dropped: every tunnel of the thread's is then
        ended by the thread itself (or left alone: see L{stop}).
        """
        with self.lock:
            self.queue(step)

    def queue(self, step: Callable[[], None]) -> None:
        """L{call}, for a caller that holds the lock already."""
        if self.state is ThreadState.RUNNING:
            inbox = self._inbox
            inbox.append(step)
            if len(inbox) == 1:  # the thread empties the queue on one wake-up
                os.eventfd_write(self._wake, 1)

    def stop(self) -> None:
        """
        Ask the thread to end its tunnels and stop, join it, then close the
        transports it handed back.  If it does not end in time, touch nothing
        of its own (its descriptors may be in use) and say so.  A thread
        that is ending already (it lingered out, or a bug ended its loop) is
        joined all the same: it may still be ending tunnels, whose
        transports the reactor must close before it stops.
        """
        with self.lock:
            if self.state is ThreadState.ABANDONED:
                return
            if self.state is ThreadState.RUNNING:
                self.state = ThreadState.STOPPING
                self._inbox.append(self._quit)
                os.eventfd_write(self._wake, 1)
        self._thread.join(self.JOIN_TIMEOUT)
        if self._thread.is_alive():
            with self.lock:
                self.state = ThreadState.ABANDONED
                count = len(self.relays)
            log.warn(
                "splice relay thread did not stop within {timeout}s; "
                "leaving its {count} tunnel(s) and their descriptors as they are",
                timeout=self.JOIN_TIMEOUT,
                count=count,
            )
            return
        with self.lock:
            self.state = ThreadState.ENDED
        self.give_back()

    def give_back(self) -> None:
        """Close, as Twisted transports, the tunnels the thread has handed back."""
        with self.lock:
            handed, self._outbox = self._outbox, []
            self._posted = False  # a tunnel that ends from now on posts anew
        for relay, abort in handed:
            try:
                relay.finish_on_reactor(abort)
            except Exception:
                # (A protocol's connectionLost failed: the other tunnels
                # handed back here still go.)
                log.failure("splice relay")

    # -- from the relay thread --------------------------------------------------

    def watch(self, end: End) -> None:
        """Make the set hold C{end}'s interest as it is now."""
        mask = mask_of(end)
        fd = end.fd
        ends = self.ends
        if ends.get(fd) is end:
            if mask:
                self._epoll.modify(fd, mask)
            else:
                del ends[fd]
                try:
                    self._epoll.unregister(fd)
                except OSError:
                    pass  # (closed already: the set dropped it itself)
        elif mask:
            self._epoll.register(fd, mask)
            ends[fd] = end

    def later(self, delay: float, step: Callable[[], None]) -> None:
        """Run C{step} in this thread in C{delay} seconds (from this thread only)."""
        heapq.heappush(self._timers, (time.monotonic() + delay, next(self._sequence), step))

    def hand_back(self, relay: SpliceRelay, abort: bool) -> None:
        """C{relay} has let go of its sockets: its transports go back to the reactor."""
        with self.lock:
            self.relays.discard(relay)
            self._outbox.append((relay, abort))
        self._handed_any = True

    def log_failure(self, message: str) -> None:
        """Log the exception being handled, through the reactor thread."""
        self._reactor.callFromThread(log.failure, message, Failure())

    def _run(self) -> None:
        # Signals are the reactor thread's to take (Python runs their
        # handlers there anyway): here they would only interrupt system calls.
        signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        try:
            self._loop()
        finally:
            self._exit()

    def _loop(self) -> None:
        poll = self._epoll.poll
        ends = self.ends
        wake = self._wake
        timers = self._timers
        while not self._quitting:
            if timers and not ends and self._holds_none():
                # Only ended tunnels' timers are left (a drain check, say):
                # they must not keep an idle thread from lingering out.
                timers.clear()
            if timers:
                timeout = max(0.0, timers[0][0] - time.monotonic())
            else:
                # (Without sockets to watch, wake up to see whether to linger on.)
                timeout = -1 if ends else self.LINGER
            try:
                events = poll(timeout, self.BATCH)
            except InterruptedError:
                continue
            if not events and not timers and self._linger_over():
                return
            for fd, event in events:
                if fd == wake:
                    self._run_inbox()
                    continue
                end = ends.get(fd)
                if end is None:
                    continue
                try:
                    # Interest is checked again: an earlier event of the
                    # same batch may have paused this socket or ended it.
                    if event & (IN | HUP) and end.reading:
                        end.do_read()
                    if event & (OUT | HUP) and end.writing and ends.get(fd) is end:
                        end.do_write()
                except OSError as e:
                    if e.errno not in AGAIN:
                        self._abort(end.relay)
                except Exception:
                    self.log_failure("splice relay")
                    self._abort(end.relay)
            if timers:
                self._run_timers()
            if self._handed_any:
                self._post_give_back()

    def _run_timers(self) -> None:
        timers = self._timers
        now = time.monotonic()
        while timers and timers[0][0] <= now:
            step = heapq.heappop(timers)[2]
            try:
                step()
            except Exception:
                self.log_failure("splice relay")

    def _post_give_back(self) -> None:
        self._handed_any = False
        with self.lock:
            if not self._outbox or self._posted:
                return
            self._posted = True
        self._reactor.callFromThread(self.give_back)

    def _abort(self, relay: SpliceRelay) -> None:
        # Nothing may end the thread: the other tunnels depend on it.
        try:
            relay._release(abort=True)
        except Exception:
            self.log_failure("splice relay")

    def _quit(self) -> None:
        self._quitting = True

    def _holds_none(self) -> bool:
        with self.lock:
            return not self.relays

    def _linger_over(self) -> bool:
        """No tunnel for L{LINGER} seconds: end the thread (unless one just came)."""
        with self.lock:
            if self.relays or self._inbox or self.state is not ThreadState.RUNNING:
                return False
            self.state = ThreadState.ENDED
        return True

    def _run_inbox(self) -> None:
        try:
            os.eventfd_read(self._wake)
        except BlockingIOError:
            pass
        with self.lock:
            steps, self._inbox = self._inbox, []
        for step in steps:
            try:
                step()
            except Exception:
                self.log_failure("splice relay")

    def _exit(self) -> None:
        # The thread's last act: no step is queued after this (the reactor
        # drops them), every tunnel still here is ended here, where it is
        # owned, and its transports are handed back.
        with self.lock:
            if self.state is ThreadState.RUNNING:  # (a bug ended the loop)
                self.state = ThreadState.ENDED
            relays = list(self.relays)
        for relay in relays:
            self._abort(relay)
        self._epoll.close()
        os.close(self._wake)
        self._post_give_back()
        self._reactor = None
