"""
The drain deadline: a tunnel one of whose peers has closed ends once what
is left for the other peer stops moving.

When one peer of a tunnel has closed (sent its EOF, or gone), the relay
still owes the other what it has buffered for it, and the other may go on
sending (a half-closed tunnel).  A peer that stops reading meanwhile would
hold the session, its descriptors and its buffers for as long as it keeps
its window shut: the idle timeout (off by default) is the only other thing
that would end it.  So once a peer has closed, the relay looks at what is
left for the other every C{timeout / CHECKS} seconds (L{Drain}); when that
has not shrunk for C{timeout} seconds, the tunnel is reset.  A slow reader
that takes a byte now and then is never cut: any progress starts the clock
again.  What is left counts what the relay holds (a transport's buffer, a
splice pipe) and what the kernel has not had acknowledged yet
(L{kernel_unsent}): a peer whose receive window stays shut leaves bytes
there too.

Cheap by construction: nothing is counted or scheduled per read.  Only a
tunnel that has a closed peer has a timer, and the check is a few integer
comparisons and one C{ioctl}.
"""

from __future__ import annotations

import array
import enum
import fcntl
import termios

__all__ = ["CHECKS", "DEFAULT_DRAIN_TIMEOUT", "Drain", "Verdict", "kernel_unsent"]

# Seconds without progress after which a tunnel whose other peer has closed
# is reset (why 60: the README's "Drain deadline"; nginx's send_timeout too).
DEFAULT_DRAIN_TIMEOUT = 60.0

# Checks per timeout: a tunnel is cut between timeout and timeout * (1 +
# 1 / CHECKS) seconds after the last byte moved.
CHECKS = 4

# SIOCOUTQ (Linux): what a socket has not had acknowledged by its peer (TCP),
# or what its peer has not read yet (Unix stream sockets).
_SIOCOUTQ = getattr(termios, "TIOCOUTQ", None)


class Verdict(enum.Enum):
    """What one check of a draining side found."""

    MOVING = "moving"  # bytes moved since the last check, or not long without
    EMPTY = "empty"  # nothing is left for the side: its peer's close is delivered
    STUCK = "stuck"  # nothing moved for the whole timeout: reset the tunnel


class Drain:
    """
    The progress of what is left for one side of a tunnel, checked every
    C{timeout / CHECKS} seconds by its relay (the relay owns the timer, in
    its owner's thread; this object is only arithmetic).

    While the relay is still half open (the side may go on sending), a side
    that has been given everything is done with (L{Verdict.EMPTY}).  While
    the relay is closing, an empty side that has still not closed counts as
    stuck too: over TLS, the close waits for the peer's own close_notify.
    """

    __slots__ = ("_last", "_still")

    def __init__(self, left: int) -> None:
        self._last = left  # what was left at the last check (or at the start)
        self._still = 0  # checks in a row that saw nothing move

    def check(self, left: int, closing: bool) -> Verdict:
        """One check, C{left} bytes being left for the side now."""
        if left == 0 and not closing:
            return Verdict.EMPTY
        if left < self._last:
            self._still = 0
        else:
            self._still += 1
        self._last = left
        return Verdict.STUCK if self._still >= CHECKS else Verdict.MOVING


def kernel_unsent(fd: int) -> int:
    """
    Bytes the kernel holds for socket C{fd} that its peer has not taken
    (TCP: not acknowledged; a Unix socket: not read); 0 where the platform
    cannot say or the socket is closed.
    """
    if _SIOCOUTQ is None or fd < 0:
        return 0
    buf = array.array("i", [0])
    try:
        fcntl.ioctl(fd, _SIOCOUTQ, buf)
    except OSError:
        return 0
    return buf[0]
