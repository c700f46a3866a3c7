"""
The splice relay as the session sees it (L{SpliceRelay}, L{can_splice},
L{available}).  What the splice relays of one reactor share is in
L{socks5twist.splice.shared}.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import Any

from twisted.internet import tcp
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from ..logs import count
from ..relay import Side
from ..shaping import Shaping
from ..twistedinternals import end_transport, has_producer, plain_and_idle, socket_of, stop_watching
from .poller import ReactorInterest, SharedPoller
from .pump import AGAIN, End, Pump, Scheduler
from .shared import state_for
from .thread import RelayThread

# Reads (both ways) a tunnel makes through the reactor before it moves to
# the relay thread: short sessions never pay for the move (see SpliceRelay).
MOVE_AFTER = 8

log = Logger()


def available() -> bool:
    """Whether this platform can splice."""
    return hasattr(os, "splice")


def can_splice(transport: Any) -> bool:
    """
    Whether a transport can be handed to the splice relay: one of Twisted's
    own TCP connections, connected, with an empty write buffer, no TLS and
    no registered producer.
    """
    return (
        plain_and_idle(transport)
        and not has_producer(transport)
        and socket_of(transport).family in (socket.AF_INET, socket.AF_INET6)
    )


class SpliceRelay:
    """
    Relays a client's TCP connection and a destination with C{splice(2)}.

    The client is one of Twisted's TCP transports; the destination is one
    too, or a bare connected socket, which the relay then owns and closes.
    Same surface as L{socks5twist.relay.StreamRelay} for the session
    (L{socks5twist.tunnel.Relay}): C{up}, C{down}, L{close}, L{abort},
    L{lost}, L{from_client} and L{eof}, all called from the reactor
    thread.  C{to_client} and C{to_remote} are bytes to send before anything
    relayed (the CONNECT reply, data the client sent early).

    A tunnel starts in the reactor's thread, its sockets the reactor's
    readers and writers (or, while four or more tunnels are, in the shared
    set of L{SharedPoller}); after L{MOVE_AFTER} reads (four round trips) it
    moves to the relay thread (L{RelayThread}), where each event costs a
    third of the Python.  Most sessions are over in a few reads and never
    pay for the move (two wake-ups across threads, and the threads' turns at
    the GIL: moving every tunnel at once cost about a quarter of the
    sessions per second); an interactive or bulk tunnel moves in its first
    round trips.  Which thread may touch which attribute is written in
    L{socks5twist.splice}; the comments here say it per attribute.
    """

    kind = "splice"
    # An idle tunnel is mostly these objects: no per-instance dictionaries.
    __slots__ = (
        "_client", "_down", "_early", "_handed_back", "_idle_call", "_idle_timeout",
        "_lost", "_on_drain", "_on_idle", "_remote", "_state", "_throttle_calls", "_up",
        "active_at", "clock", "drain_timeout", "drained", "finished", "idled", "lock", "reactor",
        "reads", "scheduler", "thread",
    )  # fmt: skip

    def __init__(
        self,
        reactor: Any,
        client: tcp.Connection,
        remote: tcp.Connection | socket.socket,
        to_client: bytes = b"",
        to_remote: bytes = b"",
        idle_timeout: float = 0.0,
        on_idle: Callable[[], None] | None = None,
        shaping: Shaping | None = None,
        drain_timeout: float = 0.0,
        on_drain: Callable[[Side], None] | None = None,
    ) -> None:
        # Fixed from here on: reactor, lock, clock, _state, _client, _remote,
        # _up, _down, _early, _on_idle, _idle_timeout, drain_timeout, _on_drain.
        self.reactor = reactor
        state = self._state = state_for(reactor)
        self.lock = state.lock
        poller = state.poller
        # Set by the reactor thread, before the tunnel moves (never after):
        self.scheduler: Scheduler = poller if poller.open >= poller.SHARED_FROM else state.direct
        poller.open += 1  # until the tunnel moves or ends on the reactor
        self.thread: RelayThread | None = None
        # The reactor thread's alone:
        self.reads = 0
        self._lost: set[Side] = set()
        self._idle_call: IDelayedCall | None = None
        self._handed_back = False
        self._throttle_calls: list[IDelayedCall] = []  # the reactor's timers of later()
        # The owner's (the reactor thread, then the relay thread once moved):
        # these, the ends and the pumps (but for Pump.moved: under the lock).
        self.finished = False
        self.idled = False
        self.drained: Side | None = None  # the side that stopped reading (see stuck)
        self.active_at = 0.0
        self._client = End(self, client)
        self._remote = End(self, remote)
        self._early = len(to_remote)  # counted as relayed, as the stream relay does
        self._up = Pump(self, self._client, self._remote, to_remote)
        self._down = Pump(self, self._remote, self._client, to_client)
        self._client.outgoing = self._remote.incoming = self._up
        self._remote.outgoing = self._client.incoming = self._down
        if shaping is not None:
            self._up.budget = shaping.up
            self._down.budget = shaping.down
        self._on_idle = on_idle
        self._idle_timeout = idle_timeout
        self.drain_timeout = drain_timeout
        self._on_drain = on_drain
        # (reactor.seconds reads the system clock: no state of the reactor's.)
        self.clock: Callable[[], float] | None = reactor.seconds if idle_timeout > 0 else None

    @property
    def up(self) -> int:
        with self.lock:
            return self._up.moved + self._early

    @property
    def down(self) -> int:
        with self.lock:
            return self._down.moved

    def start(self) -> None:
        """Take both sockets from their transports and start moving bytes."""
        for end in (self._client, self._remote):
            if end.transport is not None:
                stop_watching(end.transport)
        if self.clock is not None:
            self.active_at = self.clock()
            self._idle_call = self.reactor.callLater(self._idle_timeout, self._idle_due)
        self._step(self._start)

    def _start(self) -> None:
        for pump in (self._down, self._up):
            pump.drain()  # sends what is pending (the reply first), then starts reading

    # -- on the reactor, while the tunnel is there (End's IReadWriteDescriptor) --

    def read_on_reactor(self, end: End) -> None:
        if self.thread is None and self._step(end.do_read):
            self.reads += 1
            if self.reads == MOVE_AFTER:
                self.move_to_thread()

    def write_on_reactor(self, end: End) -> None:
        # (The reactor calls this right after a read when an event says
        # writable too: if that read moved the tunnel to the relay thread,
        # the socket is no longer this thread's.)
        if self.thread is None:
            self._step(end.do_write)

    def lost_on_reactor(self) -> None:
        if self.thread is None:
            self._release(abort=True)

    def move_to_thread(self) -> None:
        """
        Hand the tunnel to the relay thread: reactor → thread.  (Not once
        the reactor has shut down: the tunnel then stays here.)
        """
        # (thread first: once it is set, finished is the relay thread's.)
        state = self._state
        if self.thread is not None or self.finished or state.shut:
            return
        on_reactor = self.scheduler
        assert isinstance(on_reactor, ReactorInterest | SharedPoller)
        for end in (self._client, self._remote):
            on_reactor.forget(end)
        state.poller.left()
        # Sets thread and scheduler (never changed again) as the thread hears.
        state.enter(self)

    def resume(self) -> None:
        """
        The tunnel's first step in the relay thread, now its owner (queued
        by L{ReactorState.enter <socks5twist.splice.shared.ReactorState.enter>}):
        the same interest as on the reactor, in the thread's set.
        """
        if not self.finished:
            assert self.thread is not None
            for end in (self._client, self._remote):
                self.thread.watch(end)

    def _step(self, step: Callable[[], None]) -> bool:
        """
        Run a pump step on the reactor; any socket error ends the tunnel
        (both sides).  Whether it ran, to the end.
        """
        if self.finished:
            return False
        try:
            step()
        except OSError as e:
            if e.errno not in AGAIN:
                self._release(abort=True)
            return False
        return True

    # -- from the owner ---------------------------------------------------------

    def log_info(self, message: str, **fields: object) -> None:
        """Log, in the reactor thread."""
        if self.thread is None:
            log.info(message, **fields)
        else:
            self.reactor.callFromThread(log.info, message, **fields)

    def later(self, delay: float, step: Callable[[], None]) -> None:
        """
        Run C{step} (a pump's) in C{delay} seconds, in whichever thread owns
        the tunnel then: a timer of the owner's now (the reactor's, or the
        relay thread's); one that fires on the reactor after the tunnel has
        moved passes the step on to the thread.
        """
        thread = self.thread
        if thread is None:
            calls = self._throttle_calls
            calls[:] = [call for call in calls if call.active()]  # (four at most)
            calls.append(self.reactor.callLater(delay, self._due_on_reactor, step))
        else:
            thread.later(delay, lambda: self.run_in_thread(step))

    def _due_on_reactor(self, step: Callable[[], None]) -> None:
        thread = self.thread
        if thread is None:
            self._step(step)
        else:
            thread.call(lambda: self.run_in_thread(step))

    def run_in_thread(self, step: Callable[[], None]) -> None:
        """Run a pump step in the relay thread; a socket error ends the tunnel."""
        if self.finished:
            return
        try:
            step()
        except OSError as e:
            if e.errno not in AGAIN:
                self._release(abort=True)

    def other(self, pump: Pump) -> Pump:
        """The pump of the other direction."""
        return self._down if pump is self._up else self._up

    def stuck(self, pump: Pump) -> None:
        """
        What is left for C{pump}'s sink has not moved for the drain timeout
        (L{Pump.check_drain}, by the owner): reset, naming who stopped reading.
        """
        self.drained = Side.CLIENT if pump is self._down else Side.REMOTE
        self._release(abort=True)

    def direction_done(self) -> None:
        if self._up.done and self._down.done:
            self._release(abort=False)

    # -- from the reactor thread ------------------------------------------------

    def close(self) -> None:
        """Close both sides."""
        self._end(abort=False)

    def abort(self) -> None:
        self._end(abort=True)

    def lost(self, side: Side) -> None:
        """A transport reported C{connectionLost}: make sure the other goes too."""
        self._lost.add(side)
        self._end(abort=False)

    def from_client(self, data: bytes) -> None:
        """
        Bytes the session read from the client, to relay (the L{Relay
        <socks5twist.tunnel.Relay>} surface).  This relay reads the client's
        socket itself, and from L{start} on the reactor no longer does, so
        the session never has any: bytes here mean a bug upstream, and they
        cannot be put back in order with what the pump already relayed.
        Rather than drop them silently (a corrupt stream the peers would not
        notice), log one line and abort the tunnel: both peers see a reset.
        """
        if data:
            log.error(
                "splice relay was given {bytes} the client sent, but reads the"
                " client's socket itself: aborting the tunnel (a bug)",
                count=len(data),
                bytes=count(len(data), "byte"),
            )
            self.abort()

    def eof(self) -> None:
        """
        The session saw the client's EOF (the L{Relay
        <socks5twist.tunnel.Relay>} surface): nothing to do.  The pump reads
        the client's socket, where an EOF stays readable (every C{recv}
        after it returns nothing, whoever read it first), so it finds the
        EOF itself and passes it on in order, after the bytes before it.
        """

    def _end(self, abort: bool) -> None:
        if self.thread is None:
            self._release(abort)
        else:
            self.thread.call(lambda: self._release(abort))

    # -- the idle timeout: the timer is the reactor's, the verdict the owner's --

    def _idle_due(self) -> None:
        self._idle_call = None
        if self.thread is None:
            self._check_idle()
        else:
            self.thread.call(self._check_idle)

    def _check_idle(self) -> None:
        if self.finished:
            return
        assert self.clock is not None
        remaining = self._idle_timeout - (self.clock() - self.active_at)
        if remaining <= 0:
            self.idled = True
            self._release(abort=False)
        elif self.thread is None:
            self._rearm(remaining)
        else:
            self.reactor.callFromThread(self._rearm, remaining)

    def _rearm(self, delay: float) -> None:
        if not self._handed_back:
            self._idle_call = self.reactor.callLater(delay, self._idle_due)

    # -- ending: _release by the owner, then finish_on_reactor ------------------

    def _release(self, abort: bool) -> None:
        """Let go of the sockets and pipes, then hand the transports back."""
        if self.finished:
            return
        self.finished = True
        for end in (self._client, self._remote):
            end.stop_reading()
            end.stop_writing()
        for pump in (self._up, self._down):
            pump.close_pipe()
        for end in (self._client, self._remote):
            if end.transport is None:
                end.sock.close()  # a bare socket is the relay's own
        if self.thread is None:
            self._state.poller.left()
            self.finish_on_reactor(abort)
        else:
            self.thread.hand_back(self, abort)  # thread → reactor

    def finish_on_reactor(self, abort: bool) -> None:
        """
        In the reactor thread, once the tunnel is back: give the sockets
        back to their transports to close, so that the protocols see
        connectionLost and Twisted closes the descriptors.  Nothing was ever
        written through these transports while splicing, so there is nothing
        of theirs to flush: they close at once, instead of waiting a reactor
        turn for a writable event.
        """
        self._handed_back = True
        for call in self._throttle_calls:
            if call.active():
                call.cancel()
        self._throttle_calls = []
        if self._idle_call is not None:
            if self._idle_call.active():
                self._idle_call.cancel()
            self._idle_call = None
        if self.idled and self._on_idle is not None:
            self._on_idle()
        if self.drained is not None and self._on_drain is not None:
            self._on_drain(self.drained)
        for side, end in ((Side.CLIENT, self._client), (Side.REMOTE, self._remote)):
            transport = end.transport
            if transport is not None and side not in self._lost:
                end_transport(transport, abort)  # (abort: a reset)
