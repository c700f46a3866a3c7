"""
The zero-copy relay (Linux): once a tunnel is open, bytes move from socket to
pipe to socket with C{splice(2)} and never enter Python; on the reactor at
first, then, once a tunnel has made a few round trips, in a thread of the
relay's own (L{SpliceRelay}: when; L{_Loop}: why, and who owns what).

Used only when the client's end is a plain TCP transport of Twisted's own
(no TLS, no PROXY-protocol wrapper) with nothing left in its write buffer,
and the other end is one too (a BIND peer) or a bare connected socket (a
CONNECT destination: see L{socks5twist.outbound.connect_socket}); every
other tunnel uses L{socks5twist.relay.StreamRelay}.

Each direction is a L{_Pump}: a pipe between a source and a destination
socket.  Readiness drives it: the source is read only while the pipe has
room, and when the destination cannot take more, the source is not read
until it can, so at most one pipe's worth of bytes (L{PIPE_SIZE}) waits per
direction: the same flow control as the stream relay, without the copies.
EOF from a source shuts the destination's write half once the pipe is
empty, and the other direction keeps flowing; when both directions are
done, or on any error, both connections are closed: a transport through
Twisted (in the reactor's thread), so that its protocol sees
C{connectionLost} as usual, a bare socket by the relay.

A direction starts by copying through a buffer of L{COPY_SIZE} bytes and
makes its pipe only when a read fills that buffer: short exchanges never pay
for pipes, idle tunnels hold none, and bulk transfers splice.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import signal
import socket
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet import tcp
from twisted.internet.error import ConnectionAborted
from twisted.internet.interfaces import IReadDescriptor, IReadWriteDescriptor
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from .relay import IdleClock, Side, plain_and_idle

PIPE_SIZE = 1 << 20
COPY_SIZE = 1 << 16  # the buffer of a direction that could not get a pipe
# Reads (both ways) a tunnel makes through the reactor before it moves to
# the relay thread: short sessions never pay for the move (see SpliceRelay).
MOVE_AFTER = 8
_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)
_AGAIN = (errno.EAGAIN, errno.EWOULDBLOCK)

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
        and transport.producer is None
        and transport.socket.family in (socket.AF_INET, socket.AF_INET6)
    )


class _Pump:
    """One direction: C{source} → pipe → C{sink}."""

    __slots__ = (
        "copying", "done", "eof", "in_pipe", "moved", "no_pipe", "pending", "pipe",
        "relay", "sink", "source",
    )  # fmt: skip

    def __init__(self, relay: SpliceRelay, source: _End, sink: _End, pending: bytes) -> None:
        self.relay = relay
        self.source = source
        self.sink = sink
        self.pending = pending  # bytes to send before anything spliced
        self.pipe: tuple[int, int] | None = None
        self.in_pipe = 0
        self.eof = False
        self.done = False
        self.moved = 0
        # Each direction starts by copying through a small buffer (cheap for
        # the short exchanges most sessions are) and moves to a pipe when a
        # read fills the whole buffer.
        self.copying = True
        self.no_pipe = False

    def fill(self) -> None:
        """The source is readable: move what fits into the pipe, then on."""
        if self.pipe is None and not self.copying:
            try:
                self.pipe = _make_pipe()
            except OSError as e:
                # Out of descriptors (EMFILE): keep the tunnel working by
                # copying through a bounded buffer instead.
                self.relay.log_info("no pipe for splice ({error}); copying instead", error=e)
                self.copying = self.no_pipe = True
        if self.copying or self.pipe is None:
            self.copy()
            return
        room = PIPE_SIZE - self.in_pipe
        if room <= 0:
            self.source.stop_reading()
            return
        try:
            n = os.splice(self.source.fd, self.pipe[1], room, flags=_FLAGS)
        except BlockingIOError:
            return
        if n == 0:
            self.eof = True
            self.source.stop_reading()
        else:
            self.in_pipe += n
        self.drain()

    def copy(self) -> None:
        """The source is readable and this direction copies: recv, then send."""
        if self.pending:
            self.source.stop_reading()
            return
        try:
            data = self.source.sock.recv(COPY_SIZE)
        except BlockingIOError:
            return
        if not data:
            self.eof = True
            self.source.stop_reading()
            self.drain()
            return
        self.moved += len(data)
        if self.relay.idle is not None:
            self.relay.idle.touch()
        if len(data) == COPY_SIZE and self.pipe is None and not self.no_pipe:
            # A full buffer: bulk data.  Splice from now on.
            self.copying = False
        # The common case, kept short (it is the latency of every small
        # exchange): straight on to the sink, still reading the source.
        try:
            sent = self.sink.sock.send(data)
        except BlockingIOError:
            sent = 0
        if sent < len(data):
            self.pending = data[sent:]
            self._wait_for_sink()

    def drain(self) -> None:
        """Move what the pipe (and C{pending}) holds to the sink, as far as it takes."""
        if self.pending:
            try:
                sent = self.sink.sock.send(self.pending)
            except BlockingIOError:
                sent = 0
            self.pending = self.pending[sent:]
            if self.pending:
                self._wait_for_sink()
                return
        while self.in_pipe:
            assert self.pipe is not None
            try:
                n = os.splice(self.pipe[0], self.sink.fd, self.in_pipe, flags=_FLAGS)
            except BlockingIOError:
                self._wait_for_sink()
                return
            self.in_pipe -= n
            self.moved += n
            if self.relay.idle is not None:
                self.relay.idle.touch()
        self.sink.stop_writing()
        if self.eof:
            self._finish()
        elif not self.done:
            self.source.start_reading()

    def _wait_for_sink(self) -> None:
        # The sink is full: stop reading the source until it drains.
        self.source.stop_reading()
        self.sink.start_writing()

    def _finish(self) -> None:
        if self.done:
            return
        self.done = True
        self.close_pipe()
        if not self.relay.other(self).done:
            # Pass the EOF on; the other direction goes on.  (When it is
            # done too, both sockets are closed at once, and the close sends
            # the FIN.)
            try:
                self.sink.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        self.relay.direction_done()

    def close_pipe(self) -> None:
        if self.pipe is not None:
            for fd in self.pipe:
                os.close(fd)
            self.pipe = None


def _make_pipe() -> tuple[int, int]:
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:
        pass  # the default size still works, with more system calls
    return r, w


@implementer(IReadWriteDescriptor)
class _End:
    """
    One socket of the tunnel: watched by the reactor (directly, or in the
    shared poller's set) while the tunnel is new, then by the relay thread
    (L{SpliceRelay.move_to_thread}).
    """

    __slots__ = ("fd", "incoming", "outgoing", "reading", "relay", "sock", "transport", "writing")

    def __init__(self, relay: SpliceRelay, end: tcp.Connection | socket.socket) -> None:
        self.relay = relay
        # A Twisted transport, or a bare socket that the relay owns (a
        # destination connected by L{socks5twist.outbound.connect_socket}).
        if isinstance(end, socket.socket):
            self.transport: tcp.Connection | None = None
            self.sock = end
        else:
            self.transport = end
            self.sock = end.socket
        self.fd = self.sock.fileno()
        self.outgoing: _Pump | None = None  # the pump that reads from this socket
        self.incoming: _Pump | None = None  # the pump that writes to it
        self.reading = False
        self.writing = False

    def do_read(self) -> None:
        pump = self.outgoing
        assert pump is not None
        if pump.copying:
            pump.copy()
        else:
            pump.fill()

    def do_write(self) -> None:
        assert self.incoming is not None
        self.incoming.drain()

    # IReadWriteDescriptor, while the reactor watches this socket.
    def fileno(self) -> int:
        return self.fd

    def logPrefix(self) -> str:
        return "SpliceRelay"

    def doRead(self) -> None:
        relay = self.relay
        if relay.loop is None and relay._step(self.do_read):
            relay.reads += 1
            if relay.reads == MOVE_AFTER:
                relay.move_to_thread()

    def doWrite(self) -> None:
        # (The reactor calls this right after doRead when an event says
        # writable too: if that read moved the tunnel to the relay thread,
        # the socket is no longer this thread's.)
        if self.relay.loop is None:
            self.relay._step(self.do_write)

    def connectionLost(self, reason: Failure) -> None:
        self.relay._release(abort=True)

    # Interest in readiness: in the relay thread's set, the shared poller's,
    # or the reactor's.
    def start_reading(self) -> None:
        if not self.reading and not self.relay.finished:
            self.reading = True
            self._interest_changed(self.relay.reactor.addReader)

    def stop_reading(self) -> None:
        if self.reading:
            self.reading = False
            self._interest_changed(self.relay.reactor.removeReader)

    def start_writing(self) -> None:
        if not self.writing and not self.relay.finished:
            self.writing = True
            self._interest_changed(self.relay.reactor.addWriter)

    def stop_writing(self) -> None:
        if self.writing:
            self.writing = False
            self._interest_changed(self.relay.reactor.removeWriter)

    def _interest_changed(self, with_reactor: Callable[[_End], None]) -> None:
        relay = self.relay
        if relay.loop is not None:
            relay.loop.watch(self)
        elif relay.poller is not None:
            relay.poller.watch(self)
        else:
            with_reactor(self)


_IN = select.EPOLLIN
_OUT = select.EPOLLOUT
_HUP = select.EPOLLHUP | select.EPOLLERR


@implementer(IReadDescriptor)
class _Poller:
    """
    One C{epoll} set for the sockets of a reactor's splice relays that are
    still on the reactor (not yet moved to the relay thread), itself one
    reader of the reactor.

    The reactor passes each readiness event through its logging context
    (several function calls and dictionary copies); here one reactor event
    carries every relay socket that is ready, each dispatched with a method
    call.  That pays when many tunnels are busy at once, and costs a little
    when few are: the nested set adds a wake-up step and a system call to
    each event, about 7 µs on a round trip through a lone tunnel.  So a
    tunnel joins the set only when L{SHARED_FROM} tunnels or more are open
    on the reactor (L{open} counts them); below that its sockets are the
    reactor's own readers and writers.  The set is level-triggered, like the
    reactor's, and holds exactly the interest of each socket (reading,
    writing, both or neither).
    """

    BATCH = 128
    SHARED_FROM = 4

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self.open = 0  # splice relays on this reactor (not moved), shared or not
        # Only while splice relays are on the reactor: no descriptor outlives the
        # tunnels, and an idle reactor holds nothing of the relay's.
        self._epoll: select.epoll | None = None
        self._ends: dict[int, _End] = {}

    def fileno(self) -> int:
        return -1 if self._epoll is None else self._epoll.fileno()

    def logPrefix(self) -> str:
        return "SpliceRelay"

    def watch(self, end: _End) -> None:
        """Make the set hold C{end}'s interest as it is now."""
        mask = (_IN if end.reading else 0) | (_OUT if end.writing else 0)
        fd = end.fd
        epoll = self._epoll
        if epoll is not None and fd in self._ends:
            if mask:
                epoll.modify(fd, mask)
            else:
                self._drop(fd)
        elif mask:
            if epoll is None:
                epoll = self._epoll = select.epoll()
                self._reactor.addReader(self)
            epoll.register(fd, mask)
            self._ends[fd] = end

    def forget(self, end: _End) -> None:
        """Drop C{end} from the set, whatever its interest."""
        if self._epoll is not None and end.fd in self._ends:
            self._drop(end.fd)

    def _drop(self, fd: int) -> None:
        assert self._epoll is not None
        del self._ends[fd]
        self._epoll.unregister(fd)
        self._close_if_unused()

    def left(self) -> None:
        """A splice relay has left the reactor (moved to the thread, or ended)."""
        self.open -= 1
        self._close_if_unused()

    def _close_if_unused(self) -> None:
        # The set closes when no relay is left on the reactor, not with its
        # last socket: short tunnels come and go, and a set made and closed
        # between them would cost four system calls each time.
        epoll = self._epoll
        if epoll is not None and not self._ends and self.open == 0:
            self._reactor.removeReader(self)
            self._epoll = None
            epoll.close()

    def doRead(self) -> None:
        if self._epoll is None:
            return
        ends = self._ends
        for fd, event in self._epoll.poll(0, self.BATCH):
            end = ends.get(fd)
            if end is None:
                continue
            try:
                # Interest is checked again: an earlier event of the same
                # batch may have paused this socket.
                if event & (_IN | _HUP) and end.reading:
                    end.doRead()
                if event & (_OUT | _HUP) and end.writing and fd in ends:
                    end.doWrite()
            except Exception:
                log.failure("splice relay")
                end.relay.abort()

    def connectionLost(self, reason: Failure) -> None:
        # The reactor is shutting down: every tunnel ends (and the last one
        # to go closes the set).
        for end in list(self._ends.values()):
            end.relay.abort()


_pollers: dict[int, _Poller] = {}


def _poller_for(reactor: Any) -> _Poller:
    poller = _pollers.get(id(reactor))
    if poller is None or poller._reactor is not reactor:
        poller = _pollers[id(reactor)] = _Poller(reactor)
    return poller


class _Loop:
    """
    The relay thread of a reactor: one C{epoll} set holding the sockets of
    the splice tunnels that have moved here, and a plain loop that moves
    their bytes.

    Why a thread: the reactor passes each readiness event through its main
    loop and its logging context, which costs about 14 µs of Python per
    round trip through a tunnel, more than everything the relay itself does
    (a plain C{epoll} loop dispatches the same events for about 5 µs).  Here
    the events of every open tunnel go straight from C{epoll} to the pumps.
    The reactor thread keeps everything else: accepting, negotiating,
    connecting, timers and logs; it hands a tunnel over after its first round
    trips (L{SpliceRelay.move_to_thread}) and gets the transports back when
    the tunnel ends.  The two threads share the GIL, but every socket
    operation releases it, so while one thread is in the kernel the other
    runs.

    Who owns what, so that no descriptor is used by one thread while the
    other closes it: from L{SpliceRelay.move_to_thread} until it ends, a
    tunnel's sockets, pipes and pumps belong to this thread (the transports
    have stopped reading and writing, so the reactor does not look at
    them).  The reactor thread asks for things with L{call} (close, abort),
    which queues them and wakes the loop through an C{eventfd}; the loop
    ends a tunnel by dropping its sockets from the set, closing its pipes
    and its bare socket, and only then queueing the transports back to the
    reactor thread (L{hand_back}), which closes them as Twisted transports.

    The thread lives while tunnels are open and for L{LINGER} seconds after
    the last one ends, so an idle server holds no thread or descriptor of
    the relay's, and a busy one does not start a thread per tunnel.  When
    the reactor shuts down, the thread is stopped and joined, and whatever
    is still open is ended in the reactor's own thread (in the "during"
    phase: a server's graceful stop has had its "before" phase).  L{_lock}
    guards what both threads decide on: L{running}, L{relays} and the queue's
    wake-up.
    """

    BATCH = 256
    LINGER = 1.0

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.ends: dict[int, _End] = {}
        self.relays: set[SpliceRelay] = set()  # moved here and not yet handed back
        self.running = True
        self._epoll = select.epoll()
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._epoll.register(self._wake, _IN)
        self._inbox: deque[Callable[[], None]] = deque()  # reactor → loop
        self._outbox: deque[tuple[SpliceRelay, bool]] = deque()  # loop → reactor
        self._posted = False  # a hand-back call is queued in the reactor
        self._thread = threading.Thread(target=self._run, name="socks5twist splice", daemon=True)
        self._thread.start()

    # -- from the reactor thread ------------------------------------------------

    def call(self, step: Callable[[], None]) -> None:
        """Run C{step} in the relay thread (here, once the thread has stopped)."""
        with _lock:
            if self.running:
                inbox = self._inbox
                inbox.append(step)
                if len(inbox) == 1:  # the loop empties the queue on one wake-up
                    os.eventfd_write(self._wake, 1)
                return
        step()

    def stop(self) -> None:
        """Stop the thread, then end what is still open, here."""
        with _lock:
            if not self.running:
                return
            self.running = False
            os.eventfd_write(self._wake, 1)
        self._thread.join(5.0)
        while self._inbox:
            self._inbox.popleft()()
        for relay in list(self.relays):
            relay._release(abort=True)
        self._give_back()
        self._close()

    # -- from the relay thread (or the reactor's, once it has stopped) ------

    def watch(self, end: _End) -> None:
        """Make the set hold C{end}'s interest as it is now."""
        mask = (_IN if end.reading else 0) | (_OUT if end.writing else 0)
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

    def hand_back(self, relay: SpliceRelay, abort: bool) -> None:
        """A tunnel has ended: its transports go back to the reactor thread."""
        with _lock:
            self.relays.discard(relay)
        if threading.get_ident() == self._thread.ident:
            self._outbox.append((relay, abort))
        else:
            relay._hand_back(abort)

    def log_failure(self, message: str) -> None:
        """Log the exception being handled, through the reactor thread."""
        failure = Failure()
        self.reactor.callFromThread(log.failure, message, failure)

    def log_info(self, message: str, **fields: object) -> None:
        self.reactor.callFromThread(log.info, message, **fields)

    def _run(self) -> None:
        # Signals are the reactor thread's to take (Python runs their
        # handlers there anyway): here they would only interrupt system calls.
        signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        poll = self._epoll.poll
        ends = self.ends
        wake = self._wake
        while self.running:
            try:
                events = poll(-1 if self.relays else self.LINGER, self.BATCH)
            except InterruptedError:
                continue
            if not events and self._linger_over():
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
                    if event & (_IN | _HUP) and end.reading:
                        end.do_read()
                    if event & (_OUT | _HUP) and end.writing and ends.get(fd) is end:
                        end.do_write()
                except OSError as e:
                    if e.errno not in _AGAIN:
                        self._abort(end.relay)
                except Exception:
                    self.log_failure("splice relay")
                    self._abort(end.relay)
            if self._outbox and not self._posted:
                self._posted = True
                self.reactor.callFromThread(self._give_back)

    def _abort(self, relay: SpliceRelay) -> None:
        # Nothing may end the thread: the other tunnels depend on it.
        try:
            relay._release(abort=True)
        except Exception:
            self.log_failure("splice relay")

    def _linger_over(self) -> bool:
        """No tunnel for L{LINGER} seconds: end the thread (unless one just came)."""
        with _lock:
            if self.relays or self._inbox or not self.running:
                return False
            self.running = False
            self._close()
        return True

    def _close(self) -> None:
        self._epoll.close()
        os.close(self._wake)

    def _run_inbox(self) -> None:
        try:
            os.eventfd_read(self._wake)
        except BlockingIOError:
            pass
        inbox = self._inbox
        while inbox:
            step = inbox.popleft()
            try:
                step()
            except Exception:
                self.log_failure("splice relay")

    def _give_back(self) -> None:
        # In the reactor thread.  The flag goes down first, so a tunnel that
        # ends while this runs queues a call of its own.
        self._posted = False
        outbox = self._outbox
        while outbox:
            relay, abort = outbox.popleft()
            try:
                relay._hand_back(abort)
            except Exception:
                # (A protocol's connectionLost failed: the other tunnels
                # queued here still go back.)
                log.failure("splice relay")


_lock = threading.Lock()
_SIGNALS = {
    getattr(signal, name)
    for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGCHLD", "SIGUSR1", "SIGUSR2", "SIGALRM")
    if hasattr(signal, name)
}
_loops: dict[int, _Loop] = {}


def _enter(reactor: Any, relay: SpliceRelay) -> _Loop:
    """The relay thread of C{reactor} (started if there is none), for C{relay}."""
    with _lock:
        loop = _loops.get(id(reactor))
        if loop is None or loop.reactor is not reactor:
            reactor.addSystemEventTrigger("during", "shutdown", _stop, reactor)
        if loop is None or loop.reactor is not reactor or not loop.running:
            loop = _loops[id(reactor)] = _Loop(reactor)
        loop.relays.add(relay)
        return loop


def _stop(reactor: Any) -> None:
    loop = _loops.get(id(reactor))
    if loop is not None and loop.reactor is reactor:
        loop.stop()


class SpliceRelay:
    """
    Relays a client's TCP connection and a destination with C{splice(2)}.

    The client is one of Twisted's TCP transports; the destination is one
    too, or a bare connected socket, which the relay then owns and closes.
    Same surface as L{socks5twist.relay.StreamRelay} for the session: C{up},
    C{down}, L{close}, L{abort}, L{lost}, all called from the reactor
    thread.  C{to_client} and C{to_remote} are bytes to send before anything
    relayed (the CONNECT reply, data the client sent early).

    A tunnel starts in the reactor's thread, its sockets the reactor's
    readers and writers (or, while four or more tunnels are, in the shared
    set of L{_Poller}); after L{MOVE_AFTER} reads (four round trips) it
    moves to the relay thread (L{_Loop}), where each event costs a third of
    the Python.  Most sessions are over in a few reads and never pay for
    the move (two wake-ups across threads, and the threads' turns at the
    GIL: moving every tunnel at once cost about a quarter of the sessions
    per second); an interactive or bulk tunnel moves in its first round
    trips.
    """

    kind = "splice"
    # An idle tunnel is mostly these objects: no per-instance dictionaries.
    __slots__ = (
        "_client", "_down", "_early", "_lost", "_on_idle", "_remote", "_shared",
        "_up", "finished", "idle", "loop", "poller", "reactor", "reads",
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
    ) -> None:
        self.reactor = reactor
        shared = self._shared = _poller_for(reactor)
        self.poller = shared if shared.open >= shared.SHARED_FROM else None
        shared.open += 1  # until the tunnel moves or ends on the reactor
        self.loop: _Loop | None = None  # the relay thread, once the tunnel has moved
        self.reads = 0
        self._client = _End(self, client)
        self._remote = _End(self, remote)
        self._early = len(to_remote)  # counted as relayed, as the stream relay does
        self._up = _Pump(self, self._client, self._remote, to_remote)
        self._down = _Pump(self, self._remote, self._client, to_client)
        self._client.outgoing = self._remote.incoming = self._up
        self._remote.outgoing = self._client.incoming = self._down
        self._on_idle = on_idle
        self.idle = IdleClock(reactor, idle_timeout, self._idled) if idle_timeout > 0 else None
        self.finished = False
        self._lost: set[Side] = set()

    @property
    def up(self) -> int:
        return self._up.moved + self._early

    @property
    def down(self) -> int:
        return self._down.moved

    def start(self) -> None:
        """Take both sockets from their transports and start moving bytes."""
        for end in (self._client, self._remote):
            if end.transport is not None:
                end.transport.stopReading()
                end.transport.stopWriting()
        if self.idle is not None:
            self.idle.start()
        self._step(self._start)

    def _start(self) -> None:
        for pump in (self._down, self._up):
            pump.drain()  # sends what is pending (the reply first), then starts reading

    def move_to_thread(self) -> None:
        """Move from the reactor's readers and writers to the relay thread's set."""
        if self.finished or self.loop is not None:
            return
        reactor = self.reactor
        for end in (self._client, self._remote):
            if self.poller is not None:
                self.poller.forget(end)
            else:
                if end.reading:
                    reactor.removeReader(end)
                if end.writing:
                    reactor.removeWriter(end)
        self.poller = None
        self._shared.left()
        loop = self.loop = _enter(reactor, self)
        loop.call(self._resume)

    def _resume(self) -> None:
        # In the relay thread: the same interest, now in its set.
        if not self.finished:
            for end in (self._client, self._remote):
                self.loop.watch(end)  # type: ignore[union-attr]

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
            if e.errno not in _AGAIN:
                self._release(abort=True)
            return False
        return True

    def log_info(self, message: str, **fields: object) -> None:
        """Log from where the tunnel runs."""
        if self.loop is None:
            log.info(message, **fields)
        else:
            self.loop.log_info(message, **fields)

    def other(self, pump: _Pump) -> _Pump:
        """The pump of the other direction."""
        return self._down if pump is self._up else self._up

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

    def _idled(self) -> None:
        if self.finished:
            return  # ended in the relay thread; its hand-back is on the way
        if self._on_idle is not None:
            self._on_idle()
        self._end(abort=False)

    def _end(self, abort: bool) -> None:
        if self.loop is None:
            self._release(abort)
        else:
            self.loop.call(lambda: self._release(abort))

    # -- ending: L{_release} where the tunnel runs, L{_hand_back} in the reactor

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
        if self.loop is None:
            self._shared.left()
            self._hand_back(abort)
        else:
            self.loop.hand_back(self, abort)

    def _hand_back(self, abort: bool) -> None:
        # Give the sockets back to their transports to close, so that the
        # protocols see connectionLost and Twisted closes the descriptors.
        # Nothing was ever written through these transports while splicing,
        # so there is nothing of theirs to flush: they close at once,
        # instead of waiting a reactor turn for a writable event.
        if self.idle is not None:
            self.idle.stop()
        for side, end in ((Side.CLIENT, self._client), (Side.REMOTE, self._remote)):
            transport = end.transport
            if transport is None or side in self._lost:
                continue
            if transport.connected and not transport.disconnected:
                # (ConnectionAborted: Twisted resets the connection.)
                transport.connectionLost(Failure(ConnectionAborted()) if abort else connectionDone)
