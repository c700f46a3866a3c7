"""
The splice relay's data path: the two sockets of a tunnel (L{End}) and its
two directions (L{Pump}), with no idea of which thread runs them.

Each direction is a L{Pump}: a pipe between a source and a destination
socket.  Readiness drives it: the source is read only while the pipe has
room, and when the destination cannot take more, the source is not read
until it can, so at most one pipe's worth of bytes (L{PIPE_SIZE}) waits per
direction: the same flow control as the stream relay, without the copies.
EOF from a source shuts the destination's write half once the pipe is
empty, and the other direction keeps flowing; when both directions are
done, or on any error, the relay ends the tunnel.  From that EOF on, what is
left for the destination (the pipe, and what its socket has not had taken)
is checked on a timer of the owner's (L{Pump.check_drain}): a destination
that takes none of it for the drain timeout ends the tunnel with a reset.

A direction starts by copying through a buffer of L{COPY_SIZE} bytes and
makes its pipe only when a read fills that buffer: short exchanges never pay
for pipes, idle tunnels hold none, and bulk transfers splice.

Everything here belongs to the tunnel's owner of the moment (see the
package's docstring), except L{Pump.moved}, which the reactor reads while
the relay thread writes it: only under the relay's lock.  An L{End} tells
its relay's current L{Scheduler} when its interest in readiness changes;
the scheduler calls back L{End.do_read} and L{End.do_write}.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
from typing import TYPE_CHECKING, Protocol

from twisted.internet import tcp
from twisted.internet.interfaces import IReadWriteDescriptor
from twisted.python.failure import Failure
from zope.interface import implementer

from ..drain import CHECKS, Drain, Verdict, kernel_unsent
from ..twistedinternals import socket_of

if TYPE_CHECKING:
    from ..shaping import Budget
    from .relay import SpliceRelay

PIPE_SIZE = 1 << 20
COPY_SIZE = 1 << 16  # the buffer of a direction that copies
FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)
AGAIN = (errno.EAGAIN, errno.EWOULDBLOCK)


class Scheduler(Protocol):
    """Where a tunnel's interest in readiness goes: the reactor, the shared poller, the thread."""

    def watch(self, end: End) -> None:
        """Make the scheduler hold C{end}'s interest (C{reading}, C{writing}) as it is now."""


class Pump:
    """One direction: C{source} → pipe → C{sink}."""

    __slots__ = (
        "budget", "copying", "done", "draining", "eof", "in_pipe", "moved", "no_pipe", "pending",
        "pipe", "relay", "sink", "source", "throttled",
    )  # fmt: skip

    def __init__(self, relay: SpliceRelay, source: End, sink: End, pending: bytes) -> None:
        self.relay = relay
        self.source = source
        self.sink = sink
        self.pending = pending  # bytes to send before anything spliced
        self.pipe: tuple[int, int] | None = None
        self.in_pipe = 0
        self.eof = False
        self.done = False
        self.moved = 0  # bytes relayed: under relay.lock (the reactor reads it live)
        # Each direction starts by copying through a small buffer (cheap for
        # the short exchanges most sessions are) and moves to a pipe when a
        # read fills the whole buffer.
        self.copying = True
        self.no_pipe = False
        # Under a [[limit]]'s bandwidth: this direction's budget, and whether
        # the source is not read until the budget's debt is paid.
        self.budget: Budget | None = None
        self.throttled = False
        # After the source's EOF, while something is left for the sink.
        self.draining: Drain | None = None

    def fill(self) -> None:
        """The source is readable: move what fits into the pipe, then on."""
        if self.pipe is None and not self.copying:
            try:
                self.pipe = make_pipe()
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
        budget = self.budget
        if budget is not None and budget.allowed < room:
            room = budget.allowed  # at most what the budget allows
        try:
            n = os.splice(self.source.fd, self.pipe[1], room, flags=FLAGS)
        except BlockingIOError:
            return
        if n == 0:
            self.eof = True
            self.source.stop_reading()
            self.drain()
            self.watch_drain()
            return
        self.in_pipe += n
        if budget is not None:
            self.charge(budget, n)
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
            self.watch_drain()
            return
        relay = self.relay
        with relay.lock:
            self.moved += len(data)
        if relay.clock is not None:
            relay.active_at = relay.clock()
        if self.budget is not None:
            self.charge(self.budget, len(data))
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
        relay = self.relay
        while self.in_pipe:
            assert self.pipe is not None
            try:
                n = os.splice(self.pipe[0], self.sink.fd, self.in_pipe, flags=FLAGS)
            except BlockingIOError:
                self._wait_for_sink()
                return
            self.in_pipe -= n
            with relay.lock:
                self.moved += n
            if relay.clock is not None:
                relay.active_at = relay.clock()
        self.sink.stop_writing()
        if self.eof:
            self._finish()
        elif not self.done and not self.throttled:
            self.source.start_reading()

    def charge(self, budget: Budget, n: int) -> None:
        """
        C{n} bytes were read from the source: charge them, and if the budget
        is in debt, stop reading the source until it is paid (a timer of the
        owner's, L{SpliceRelay.later}: no polling meanwhile).
        """
        wait = budget.charge(n)
        if wait > 0 and not self.throttled:
            self.throttled = True
            self.source.stop_reading()
            self.relay.later(wait, self.unthrottle)

    def unthrottle(self) -> None:
        """The budget's debt is paid: read the source again (if there is room)."""
        self.throttled = False
        if not self.done and not self.relay.finished:
            self.drain()

    def left(self) -> int:
        """Bytes not yet taken by the sink: in the pipe, pending, and in its socket."""
        return self.in_pipe + len(self.pending) + kernel_unsent(self.sink.fd)

    def watch_drain(self) -> None:
        """
        The source has sent its EOF: if anything is left for the sink, check
        every C{drain_timeout / CHECKS} seconds that it moves (a timer of
        the owner's, L{SpliceRelay.later}; one that fires after the tunnel
        has ended does nothing).
        """
        relay = self.relay
        timeout = relay.drain_timeout
        if timeout <= 0 or relay.finished:
            return
        left = self.left()
        if left:
            self.draining = Drain(left)
            relay.later(timeout / CHECKS, self.check_drain)

    def check_drain(self) -> None:
        """One check (in the owner's thread): go on, stop, or end the tunnel."""
        draining = self.draining
        assert draining is not None
        verdict = draining.check(self.left(), closing=False)
        if verdict is Verdict.MOVING:
            self.relay.later(self.relay.drain_timeout / CHECKS, self.check_drain)
        elif verdict is Verdict.STUCK:
            self.relay.stuck(self)
        else:
            self.draining = None

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


def make_pipe() -> tuple[int, int]:
    """A non-blocking pipe of L{PIPE_SIZE} bytes (or the system's default size)."""
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:
        pass  # the default size still works, with more system calls
    return r, w


@implementer(IReadWriteDescriptor)
class End:
    """
    One socket of the tunnel, and its interest in readiness (C{reading},
    C{writing}), which its relay's scheduler holds.  While the tunnel is on
    the reactor, this is the reactor's reader and writer (directly, or
    through the shared poller), hence C{doRead}, C{doWrite} and the rest.
    """

    __slots__ = ("fd", "incoming", "outgoing", "reading", "relay", "sock", "transport", "writing")

    def __init__(self, relay: SpliceRelay, end: tcp.Connection | socket.socket) -> None:
        self.relay = relay
        # A Twisted transport, or a bare socket that the relay owns (a
        # destination connected by L{socks5twist.socketconnect.connect_socket}).
        if isinstance(end, socket.socket):
            self.transport: tcp.Connection | None = None
            self.sock = end
        else:
            self.transport = end
            self.sock = socket_of(end)  # once: the data path uses sock and fd
        self.fd = self.sock.fileno()
        self.outgoing: Pump | None = None  # the pump that reads from this socket
        self.incoming: Pump | None = None  # the pump that writes to it
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
        self.relay.read_on_reactor(self)

    def doWrite(self) -> None:
        self.relay.write_on_reactor(self)

    def connectionLost(self, reason: Failure) -> None:
        self.relay.lost_on_reactor()

    # Interest in readiness, held by the relay's scheduler of the moment.
    def start_reading(self) -> None:
        if not self.reading and not self.relay.finished:
            self.reading = True
            self.relay.scheduler.watch(self)

    def stop_reading(self) -> None:
        if self.reading:
            self.reading = False
            self.relay.scheduler.watch(self)

    def start_writing(self) -> None:
        if not self.writing and not self.relay.finished:
            self.writing = True
            self.relay.scheduler.watch(self)

    def stop_writing(self) -> None:
        if self.writing:
            self.writing = False
            self.relay.scheduler.watch(self)
