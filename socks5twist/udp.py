"""
UDP ASSOCIATE (RFC 1928 section 7): a datagram relay that is safe by default.

One L{UDPAssociation} per request.  It owns:

- the client-facing socket, on the address the client reached the proxy on
  (the port named in the reply), which takes datagrams only from the
  client's IP as the control connection shows it, and then only from one
  port of it: the port the request named, when it named that IP
  (L{Lock.EXACT}), and otherwise the port of the first datagram (behind NAT
  the request names an address the proxy never sees: L{lock_for});
- one socket per address family towards destinations, opened when first
  needed, which take datagrams only from addresses the client has sent to
  (unless C{any_source} is set).

Everything is dropped rather than answered: a malformed or fragmented
datagram, one from the wrong source, one whose name does not resolve.  Each
drop is counted by reason for the session's log line; none is logged one by
one, so a flood cannot flood the log.
"""

from __future__ import annotations

import collections
import enum
from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet import error
from twisted.internet.interfaces import IAddress, IHostnameResolver, IListeningPort
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from . import codec, gsswire, outbound
from .addresses import Address, IPAddress, literal_ip, parse_ip
from .codec import MalformedMessage
from .gss import GSSFailure, Protector
from .logsafe import escape
from .relay import IdleClock
from .shaping import Shaping

# Bounds on what one association remembers.
MAX_DESTINATIONS = 4096  # addresses the client has sent to (replies allowed from)
MAX_NAMES = 256  # resolved names kept
MAX_WAITING = 64  # datagrams held while their names resolve
MAX_DATAGRAM = 65535


class Lock(enum.Enum):
    """
    How an association fixes the client's UDP address, by what the request's
    DST.ADDR and DST.PORT said (RFC 1928 lets the server use them to limit
    the association).  Whatever they said, only datagrams from the client's
    IP as the control connection shows it are taken; the value (also the
    metrics' label and the session line's C{lock=}) says which port of it.
    """

    EXACT = "exact"
    """The request named the client's IP and a port: only that port."""

    IP = "ip"
    """The request named the client's IP and port 0: the first datagram's port."""

    UNSPECIFIED = "unspecified"
    """C{0.0.0.0} or C{::} (any port): the first datagram's port."""

    NAT = "nat"
    """
    Another address or a name (the client's own address behind NAT, or the
    destination's, as many clients send): the first datagram's port.
    """


def lock_for(client_ip: IPAddress, stated: Address) -> Lock:
    """The L{Lock} of an association whose request stated C{stated}."""
    ip = literal_ip(stated)
    if ip is not None and ip.is_unspecified:
        return Lock.UNSPECIFIED
    if ip != client_ip:
        return Lock.NAT
    return Lock.EXACT if stated.port else Lock.IP


class _Side(DatagramProtocol):
    noisy = False

    def __init__(self, receive: Callable[[bytes, tuple[str, int]], None]) -> None:
        self._receive = receive

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self._receive(datagram, addr)


class UDPAssociation:
    """
    The relay for one UDP ASSOCIATE.

    @param client_ip: the control connection's client IP; datagrams from any
        other IP are dropped.
    @param expected: the request's DST.ADDR and DST.PORT: when they name
        C{client_ip} and a port, datagrams from another port are dropped;
        otherwise the first datagram's port is the only one taken
        (L{lock_for}).
    @param interface: the local address of the client-facing socket.
    @param any_source: relay datagrams from any remote address, not only
        from those the client has sent to.
    @param shaping: the budgets of a [[limit]]'s bandwidth: a datagram (its
        payload) that finds its direction's budget in debt is dropped
        (counted as C{bandwidth}), not queued.
    @param protector: under GSSAPI integrity or confidentiality (RFC 1961
        section 5), each datagram between the client and this relay is one
        wrapped message (C{01 03 LEN TOKEN}); one that is not, or does not
        unwrap, is dropped (counted as C{protection}): a datagram is easy to
        forge, and would otherwise let anyone end the association.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        client_ip: IPAddress,
        expected: Address,
        interface: str,
        any_source: bool = False,
        idle_timeout: float = 0.0,
        on_idle: Callable[[], None] | None = None,
        resolve_timeout: float = 10.0,
        check: Callable[[IPAddress | None, int, str | None], bool | None] | None = None,
        outgoing: Mapping[int, str] | None = None,
        resolver: IHostnameResolver | None = None,
        shaping: Shaping | None = None,
        protector: Protector | None = None,
    ) -> None:
        self._reactor = reactor
        self._protector = protector
        self._shaping = shaping
        self.client_ip = client_ip
        self.lock = lock_for(client_ip, expected)
        self._expected_port = expected.port if self.lock is Lock.EXACT else None
        self.interface = interface
        self.any_source = any_source
        self._resolve_timeout = resolve_timeout
        self._resolver = resolver
        self._check = check
        self._outgoing = outgoing or {}
        self.client_address: tuple[str, int] | None = None
        self._client_port: IListeningPort | None = None
        self._remote_ports: dict[int, IListeningPort] = {}
        self._destinations: collections.OrderedDict[tuple[IPAddress, int], None] = (
            collections.OrderedDict()
        )
        self._allowed: collections.OrderedDict[tuple[IPAddress, int, str | None], None] = (
            collections.OrderedDict()
        )
        self._names: collections.OrderedDict[str, IPAddress] = collections.OrderedDict()
        self._waiting: dict[str, list[tuple[int, bytes]]] = {}
        self._waiting_count = 0
        self._idle = (
            IdleClock(reactor, idle_timeout, on_idle) if idle_timeout > 0 and on_idle else None
        )
        self.closed = False
        self.up_datagrams = self.up_bytes = 0
        self.down_datagrams = self.down_bytes = 0
        self.dropped: collections.Counter[str] = collections.Counter()

    # -- lifetime ------------------------------------------------------------

    def open(self) -> IAddress:
        """Listen on the client-facing socket (raises L{CannotListenError})."""
        self._client_port = self._reactor.listenUDP(
            0, _Side(self.from_client), interface=self.interface, maxPacketSize=MAX_DATAGRAM
        )
        if self._idle is not None:
            self._idle.start()
        return self._client_port.getHost()

    def close(self) -> None:
        """Close every socket of the association at once."""
        if self.closed:
            return
        self.closed = True
        if self._idle is not None:
            self._idle.stop()
        ports = [self._client_port, *self._remote_ports.values()]
        self._client_port = None
        self._remote_ports.clear()
        for port in ports:
            if port is not None:
                port.stopListening()

    def _touch(self) -> None:
        if self._idle is not None:
            self._idle.touch()

    # -- client to destination -------------------------------------------------

    def from_client(self, datagram: bytes, addr: tuple[str, int]) -> None:
        if self.closed:
            return
        wrong = self._wrong_source(addr)
        if wrong is not None:
            self.dropped[wrong] += 1
            return
        if self._protector is not None:
            datagram = self._unwrap(datagram)
            if not datagram:
                self.dropped["protection"] += 1
                return
        try:
            parsed = codec.parse_udp_datagram(datagram)
        except MalformedMessage:
            self.dropped["malformed"] += 1
            return
        if parsed.frag != 0:
            self.dropped["fragmented"] += 1
            return
        self.client_address = (addr[0], addr[1])
        self._touch()
        ip = literal_ip(parsed.address)
        if ip is not None:
            self._send(ip, parsed.address.port, parsed.data, None)
            return
        name = parsed.address.host
        if self._check is not None and self._check(None, parsed.address.port, name) is False:
            self.dropped["denied"] += 1
            return
        known = self._names.get(name)
        if known is not None:
            self._names.move_to_end(name)
            self._send(known, parsed.address.port, parsed.data, name)
            return
        self._resolve_then_send(name, parsed.address.port, parsed.data)

    def _wrong_source(self, addr: tuple[str, int]) -> str | None:
        """
        Why a datagram from C{addr} is not the client's (a drop reason), or
        C{None}.  The first datagram that passes (and parses) fixes the port.
        """
        try:
            ip = parse_ip(addr[0])
        except ValueError:
            return "wrong source ip"
        if ip != self.client_ip:
            return "wrong source ip"
        if self.client_address is not None:
            port: int | None = self.client_address[1]
        else:
            port = self._expected_port
        if port is not None and addr[1] != port:
            return "wrong source port"
        return None

    def _resolve_then_send(self, name: str, port: int, data: bytes) -> None:
        if self._waiting_count >= MAX_WAITING:
            self.dropped["resolver backlog"] += 1
            return
        self._waiting_count += 1
        queue = self._waiting.get(name)
        if queue is not None:
            queue.append((port, data))
            return
        self._waiting[name] = [(port, data)]
        d = outbound.resolve(self._reactor, name, self._resolve_timeout, self._resolver)
        d.addCallbacks(self._resolved, self._unresolved, (name,), {}, (name,))
        d.addErrback(self._unexpected)

    def _resolved(self, ips: list[IPAddress], name: str) -> None:
        queue = self._waiting.pop(name, [])
        self._waiting_count -= len(queue)
        if self.closed:
            return
        ip = ips[0]
        self._names[name] = ip
        if len(self._names) > MAX_NAMES:
            self._names.popitem(last=False)
        for port, data in queue:
            self._send(ip, port, data, name)

    def _unresolved(self, failure: Failure, name: str) -> None:
        queue = self._waiting.pop(name, [])
        self._waiting_count -= len(queue)
        self.dropped["unresolved"] += len(queue)

    def _unexpected(self, failure: Failure) -> None:
        self.log.failure("unexpected error in a UDP association", failure)

    def _send(self, ip: IPAddress, port: int, data: bytes, name: str | None) -> None:
        if port == 0:
            self.dropped["port 0"] += 1
            return
        key = (ip, port)
        checked = (ip, port, name)
        if self._check is not None and checked not in self._allowed:
            # Checked once per destination and the name it was asked by (a
            # name rule may deny a name that leads to an address already
            # allowed by another name or as a literal).
            if not self._check(ip, port, name):
                self.dropped["denied"] += 1
                return
            self._allowed[checked] = None
            if len(self._allowed) > MAX_DESTINATIONS:
                self._allowed.popitem(last=False)
        if self._shaping is not None and not self._shaping.up.take(len(data)):
            self.dropped["bandwidth"] += 1
            return
        try:
            remote = self._remote_port(ip.version)
            remote.write(data, (str(ip), port))  # type: ignore[attr-defined]
        except error.MessageLengthError:
            self.dropped["too big"] += 1
            return
        except (OSError, error.CannotListenError):
            self.dropped["send failed"] += 1
            return
        self._destinations[key] = None
        self._destinations.move_to_end(key)
        if len(self._destinations) > MAX_DESTINATIONS:
            self._destinations.popitem(last=False)
        self.up_datagrams += 1
        self.up_bytes += len(data)

    def _remote_port(self, version: int) -> IListeningPort:
        port = self._remote_ports.get(version)
        if port is None:
            interface = self._outgoing.get(version, "0.0.0.0" if version == 4 else "::")
            port = self._reactor.listenUDP(
                0, _Side(self.from_remote), interface=interface, maxPacketSize=MAX_DATAGRAM
            )
            self._remote_ports[version] = port
        return port

    # -- destination to client ---------------------------------------------------

    def from_remote(self, datagram: bytes, addr: tuple[str, int]) -> None:
        if self.closed:
            return
        ip = parse_ip(addr[0])
        if not self.any_source and (ip, addr[1]) not in self._destinations:
            self.dropped["unsolicited"] += 1
            return
        if self.client_address is None or self._client_port is None:
            self.dropped["no client address"] += 1
            return
        if self._shaping is not None and not self._shaping.down.take(len(datagram)):
            self.dropped["bandwidth"] += 1
            return
        self._touch()
        header = Address.for_ip(str(ip), addr[1])
        message = codec.build_udp_datagram(header, datagram)
        if self._protector is not None:
            try:
                message = self._wrap(message)
            except (GSSFailure, ValueError):  # the context is gone, or too big to wrap whole
                self.dropped["too big"] += 1
                return
        try:
            self._client_port.write(message, self.client_address)  # type: ignore[attr-defined]
        except error.MessageLengthError:
            self.dropped["too big"] += 1
            return
        except OSError:
            self.dropped["send failed"] += 1
            return
        self.down_datagrams += 1
        self.down_bytes += len(datagram)

    def _unwrap(self, datagram: bytes) -> bytes:
        """The datagram in a wrapped message, or C{b""} (not one, or a forgery)."""
        assert self._protector is not None
        try:
            parsed = gsswire.parse(datagram, gsswire.Mtyp.MESSAGE)
            if parsed is None or parsed[1] != len(datagram):
                return b""
            return self._protector.unwrap(parsed[0])
        except (MalformedMessage, GSSFailure):
            return b""

    def _wrap(self, message: bytes) -> bytes:
        """One wrapped message for one datagram (never cut in two)."""
        assert self._protector is not None
        return gsswire.build(gsswire.Mtyp.MESSAGE, self._protector.wrap_one(message))

    def describe_drops(self) -> str:
        """C{reason:count,...}, for the log line."""
        return ",".join(f"{reason}:{n}" for reason, n in sorted(self.dropped.items())) or "0"

    def describe_source(self) -> str:
        """
        C{lock=LOCK source=IP:PORT} for the log line: how the client's UDP
        address was fixed, and the address it was fixed to (C{-} before a
        datagram came).
        """
        if self.client_address is None:
            source = "-"
        else:
            host, port = self.client_address
            ip = parse_ip(host)
            source = f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"
        return f"lock={self.lock.value} source={escape(source)}"
