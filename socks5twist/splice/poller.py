"""
The schedulers of a tunnel that is on the reactor: the reactor's own reader
and writer sets (L{ReactorInterest}), or, while several tunnels are, one
C{epoll} set of the relay's own that the reactor watches as a single reader
(L{SharedPoller}).  Both live in the reactor's thread and nowhere else.

Both hold their reactor through a weak reference: they are kept, per
reactor, in a registry (L{socks5twist.splice.shared.ReactorState}) that must
not keep a reactor alive.
"""

from __future__ import annotations

import select
import weakref
from typing import Any

from twisted.internet.interfaces import IReadDescriptor
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from .pump import End

IN = select.EPOLLIN
OUT = select.EPOLLOUT
HUP = select.EPOLLHUP | select.EPOLLERR

log = Logger()


def mask_of(end: End) -> int:
    """The C{epoll} events that C{end}'s interest asks for."""
    return (IN if end.reading else 0) | (OUT if end.writing else 0)


class ReactorInterest:
    """A tunnel's sockets as the reactor's own readers and writers."""

    __slots__ = ("_reactor",)

    def __init__(self, reactor: weakref.ref[Any]) -> None:
        self._reactor = reactor

    def watch(self, end: End) -> None:
        reactor = self._reactor()
        assert reactor is not None  # (the tunnel's relay holds it)
        if end.reading:
            reactor.addReader(end)
        else:
            reactor.removeReader(end)
        if end.writing:
            reactor.addWriter(end)
        else:
            reactor.removeWriter(end)

    def forget(self, end: End) -> None:
        """Stop watching C{end}, whatever its interest (the tunnel moves or ends)."""
        reactor = self._reactor()
        assert reactor is not None
        if end.reading:
            reactor.removeReader(end)
        if end.writing:
            reactor.removeWriter(end)


@implementer(IReadDescriptor)
class SharedPoller:
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
    reactor's own readers and writers (L{ReactorInterest}).  The set is
    level-triggered, like the reactor's, and holds exactly the interest of
    each socket (reading, writing, both or neither).
    """

    BATCH = 128
    SHARED_FROM = 4

    def __init__(self, reactor: weakref.ref[Any]) -> None:
        self._reactor = reactor
        self.open = 0  # splice relays on this reactor (not moved), shared or not
        # Only while splice relays are on the reactor: no descriptor outlives the
        # tunnels, and an idle reactor holds nothing of the relay's.
        self._epoll: select.epoll | None = None
        self._ends: dict[int, End] = {}

    def fileno(self) -> int:
        return -1 if self._epoll is None else self._epoll.fileno()

    def logPrefix(self) -> str:
        return "SpliceRelay"

    def watch(self, end: End) -> None:
        """Make the set hold C{end}'s interest as it is now."""
        mask = mask_of(end)
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
                reactor = self._reactor()
                assert reactor is not None  # (the tunnel's relay holds it)
                reactor.addReader(self)
            epoll.register(fd, mask)
            self._ends[fd] = end

    def forget(self, end: End) -> None:
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
            reactor = self._reactor()
            if reactor is not None:
                reactor.removeReader(self)
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
                if event & (IN | HUP) and end.reading:
                    end.doRead()
                if event & (OUT | HUP) and end.writing and fd in ends:
                    end.doWrite()
            except Exception:
                log.failure("splice relay")
                end.relay.abort()

    def connectionLost(self, reason: Failure) -> None:
        # The reactor is shutting down: every tunnel ends (and the last one
        # to go closes the set).
        for end in list(self._ends.values()):
            end.relay.abort()
