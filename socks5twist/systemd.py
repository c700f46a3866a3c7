"""
Listening sockets passed by systemd (socket activation): what Twisted's
C{systemd:} endpoint leaves to its caller.

Twisted's parser (C{twisted.internet.endpoints._SystemdParser}) finds the
inherited descriptor and builds an C{AdoptedStreamServerEndpoint} with the
family C{domain=} names.  Two things go wrong there, and are handled here:

- The family is taken on trust.  A socket unit's C{ListenStream=1080} (a
  bare port) passes a dual-stack C{AF_INET6} socket; adopted as C{domain=INET}
  every client address comes out as garbage (C{[::58cb:b547:9e7f:0]}), which
  the allow-list, the rules and the logs would then believe.  The socket
  itself says its family: L{adopt_real_family} serves it with that one.
- When nothing was passed (no C{LISTEN_FDS} for this process, or, with
  Twisted 26.10, no C{LISTEN_FDNAMES} beside it, which
  C{systemd-socket-activate} sets only with C{--fdname}), the parser fails
  with C{list index out of range}: L{explain} says what is missing instead.

A descriptor that is not a listening stream socket (a C{ListenDatagram=}
unit, a file) is refused at start-up by L{check}.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from twisted.internet.endpoints import AdoptedStreamServerEndpoint
from twisted.logger import Logger

PREFIX = "systemd:"

log = Logger()


def _family_and_listening(fileno: int) -> tuple[int, int, bool]:
    """The family, type and listening state of descriptor C{fileno} (left open)."""
    probe = socket.socket(fileno=os.dup(fileno))
    try:
        listening = bool(probe.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
        return probe.family, probe.type, listening
    finally:
        probe.close()


def check(endpoint: Any) -> None:
    """
    Raise C{ValueError} unless C{endpoint}, if it adopts an inherited
    descriptor, adopts a listening stream socket.
    """
    if not isinstance(endpoint, AdoptedStreamServerEndpoint):
        return
    try:
        _, kind, listening = _family_and_listening(endpoint.fileno)
    except OSError as e:
        raise ValueError(f"descriptor {endpoint.fileno} is not a socket: {e.strerror}") from None
    if kind != socket.SOCK_STREAM or not listening:
        raise ValueError(
            f"descriptor {endpoint.fileno} is not a listening stream socket"
            " (the socket unit needs ListenStream=, with Accept=no)"
        )


def adopt_real_family(endpoint: Any, description: str) -> None:
    """
    Serve an inherited socket with the family it has, whatever C{domain=}
    said (a dual-stack C{ListenStream=1080} socket is C{AF_INET6}).
    """
    if not isinstance(endpoint, AdoptedStreamServerEndpoint):
        return
    family, _, _ = _family_and_listening(endpoint.fileno)
    if family != endpoint.addressFamily:
        log.info(
            "{description}: the socket systemd passed is {family}; serving it as such",
            description=description,
            family=socket.AddressFamily(family).name,
        )
        endpoint.addressFamily = family


def explain(description: str, error: Exception) -> str:
    """
    What went wrong with C{description}, for a start-up error: for a
    C{systemd:} port whose socket was not passed, what was missing.
    """
    if description.startswith(PREFIX) and isinstance(error, (IndexError, KeyError)):
        return (
            "systemd passed no such socket to this process (it needs LISTEN_PID, "
            "LISTEN_FDS and LISTEN_FDNAMES: start it from a socket unit, or with "
            "systemd-socket-activate --fdname=NAME)"
        )
    return str(error)
