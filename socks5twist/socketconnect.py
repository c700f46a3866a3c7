"""
A bare C{connect(2)} for a tunnel that will splice: L{connect_socket}.

The splice relay needs nothing of its destination but a connected socket
(L{socks5twist.tunnel} decides that it will splice before connecting).
Twisted's client transport (connector, address resolution, protocol, its
own close) costs more than the rest of a short session; this costs a
socket, one writable event and a timer.  Its failures are the errors
Twisted's connectors raise, so L{socks5twist.outbound.reply_for_failure}
gives them the same reply codes.  Every other outbound connection is
L{socks5twist.outbound}'s.
"""

from __future__ import annotations

import errno
import os
import socket
from typing import Any

from twisted.internet import defer, error
from twisted.internet.interfaces import IDelayedCall, IWriteDescriptor
from twisted.python.failure import Failure
from zope.interface import implementer

from .addresses import IPAddress, ip_text
from .logs import seconds

__all__ = ["connect_socket"]


@implementer(IWriteDescriptor)
class _SocketConnect:
    """
    A non-blocking C{connect(2)} that the reactor watches: the socket turns
    writable when the attempt ends, and C{SO_ERROR} says how it ended.
    """

    __slots__ = ("_fd", "_reactor", "_timer", "deferred", "sock")

    def __init__(self, reactor: Any, sock: socket.socket) -> None:
        self._reactor = reactor
        self.sock: socket.socket | None = sock
        self._fd = sock.fileno()
        self._timer: IDelayedCall | None = None
        self.deferred: defer.Deferred[socket.socket] = defer.Deferred(self._cancel)

    def fileno(self) -> int:
        return self._fd

    def logPrefix(self) -> str:
        return "connect"

    def doWrite(self) -> None:
        sock = self.sock
        if sock is None:
            return
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code in (errno.EINPROGRESS, errno.EALREADY):
            return  # not over yet
        self._stop()
        if code:
            self._fail(_connect_error(code))
        else:
            self.sock = None
            self.deferred.callback(sock)

    def connectionLost(self, reason: Failure) -> None:
        # The reactor saw an error or hang-up on the socket (a refused
        # connection, for one): SO_ERROR says which.
        if self.sock is None:
            return
        code = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        self._stop()
        if code:
            self._fail(_connect_error(code))
        else:
            self._fail(error.ConnectError(string=reason.getErrorMessage()))

    def timed_out(self, timeout: float) -> None:
        self._timer = None
        self._stop()
        self._fail(error.TimeoutError(string=f"no connection within {seconds(timeout)}"))

    def _stop(self) -> None:
        self._reactor.removeWriter(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fail(self, reason: Exception) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if not self.deferred.called:
            self.deferred.errback(Failure(reason))

    def _cancel(self, deferred: defer.Deferred[socket.socket]) -> None:
        self._stop()
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        # The Deferred fails with CancelledError by itself.


def _connect_error(code: int) -> Exception:
    """The error Twisted raises for a connect(2) that failed with C{code}."""
    failure: Exception = error.getConnectError((code, os.strerror(code)))
    return failure


_NONBLOCK = getattr(socket, "SOCK_NONBLOCK", 0)


def connect_socket(
    reactor: Any, ip: IPAddress, port: int, timeout: float, bind: str | None = None
) -> defer.Deferred[socket.socket]:
    """
    Connect a plain non-blocking TCP socket to C{ip} and C{port} (from
    C{bind}, if given), within C{timeout} seconds (0: no bound).

    Failures are the errors Twisted would raise
    (L{error.ConnectionRefusedError}, L{error.TimeoutError}, ...; see the
    module docstring).  Cancelling closes the socket.  A destination on
    this machine is connected when C{connect()} returns, and the result
    comes at once.
    """
    family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
    try:
        # Non-blocking from the start where the platform can: no separate
        # system call to make it so.
        sock = socket.socket(family, socket.SOCK_STREAM | _NONBLOCK)
    except OSError as e:
        return defer.fail(error.ConnectError(string=str(e)))
    try:
        if not _NONBLOCK:
            sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if bind is not None:
            try:
                sock.bind((bind, 0))
            except OSError as e:
                raise error.ConnectBindError(e.errno, e.strerror) from None
        code = sock.connect_ex((ip_text(ip), port))
        if code not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK):
            raise _connect_error(code)
    except Exception:
        sock.close()
        return defer.fail()
    if _connected(sock):
        # A destination on this machine: the kernel completed the handshake
        # inside connect(), so there is nothing to wait for.
        return defer.succeed(sock)
    attempt = _SocketConnect(reactor, sock)
    reactor.addWriter(attempt)
    if timeout > 0:
        attempt._timer = reactor.callLater(timeout, attempt.timed_out, timeout)
    return attempt.deferred


def _connected(sock: socket.socket) -> bool:
    try:
        sock.getpeername()
    except OSError:
        return False
    return True
