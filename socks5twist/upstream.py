"""
Reaching a destination through a rule's upstream proxies: the failover over
a route's alternatives (L{connect}), and what the server remembers of
upstreams that failed (L{Upstreams}: marks that put a chain last for
L{DOWN_FOR} seconds, and the counters that metrics show).

A chain is client endpoints nested in one another
(L{socks5twist.hopchain.endpoint_for}), whose failures are tagged with the
hop they were reaching (L{HopFailed}), so that a failure reply from the
last hop (the destination's answer, passed on with its code) is told apart
from an upstream that failed (the next alternative is tried; X'01' when
none is left).
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IHostnameResolver
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from .client import SOCKS5ClientEndpoint, SOCKS5Error
from .codec import Address, Reply
from .hopchain import HopFailed, endpoint_for
from .logsafe import printable
from .relay import RemoteProtocol
from .routes import Chain, Hop, Route, chain_label

__all__ = ["DOWN_FOR", "AllRoutesFailed", "Answered", "HopFailed", "Routed", "Upstreams", "connect"]

# Seconds an upstream chain that failed is tried last (after those up).
DOWN_FOR = 30.0

log = Logger()

_FACTORY = Factory.forProtocol(RemoteProtocol)
_FACTORY.noisy = False


class AllRoutesFailed(Exception):
    """Every alternative of a route failed; C{tried}: (chain label, why) of each."""

    def __init__(self, tried: Sequence[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{label}: {why}" for label, why in tried))
        self.tried = tuple(tried)

    def describe(self) -> str:
        """Each chain tried and why it failed, for a log line (escaped)."""
        return ", ".join(f"{label} ({why})" for label, why in self.tried)


class Answered(Exception):
    """
    The last hop of C{chain} answered the request with failure reply
    C{code} (HTTP statuses mapped: see L{socks5twist.client.http}); C{why}
    is escaped.
    """

    def __init__(self, chain: Chain, code: int, why: str) -> None:
        super().__init__(why)
        self.chain = chain
        self.code = code
        self.why = why

    @property
    def reply(self) -> Reply:
        """The code as a reply to send (one RFC 1928 does not assign: X'01')."""
        if 0 < self.code <= Reply.ADDRESS_TYPE_NOT_SUPPORTED:
            return Reply(self.code)
        return Reply.GENERAL_FAILURE


@dataclass(frozen=True, slots=True)
class Routed:
    """A tunnel opened through C{chain}: the protocol, and the last hop's BND address."""

    protocol: RemoteProtocol
    bound: Address
    chain: Chain


class Upstreams:
    """
    The marks of chains that failed (by their label: hops without
    credentials), kept across reloads, and the counters of routed
    sessions.  Label sets are bounded by the rules files loaded.
    """

    def __init__(self, reactor: Any, down_for: float = DOWN_FOR) -> None:
        self._reactor = reactor
        self.down_for = down_for
        self._down: dict[str, float] = {}  # chain label -> until
        self.tunnels: collections.Counter[tuple[str, str]] = collections.Counter()
        self.hop_failures: collections.Counter[str] = collections.Counter()
        self.route_failures: collections.Counter[str] = collections.Counter()

    def is_down(self, chain: Chain) -> bool:
        label = chain_label(chain)
        until = self._down.get(label)
        if until is None:
            return False
        if self._reactor.seconds() >= until:
            del self._down[label]  # no mark outlives its time
            return False
        return True

    def order(self, chains: Sequence[Chain]) -> list[Chain]:
        """
        The chains to try, in order: those up first, then those marked down
        (a last resort: no request fails without every chain tried).
        """
        down = [chain for chain in chains if self.is_down(chain)]
        return [chain for chain in chains if chain not in down] + down

    def mark_down(self, chain: Chain, hop: Hop, rule: str, why: str) -> None:
        """
        C{chain} failed at C{hop}: try it last for L{down_for} seconds.  One
        line when it goes down; failing again while down extends the mark.
        """
        label = chain_label(chain)
        was_down = self.is_down(chain)
        self._down[label] = self._reactor.seconds() + self.down_for
        self.hop_failures[hop.label] += 1
        if was_down:
            return
        log.warn(
            "upstream {hop} failed (route {route} of rule {rule}): {why};"
            " marked down, tried last for {seconds:g} s",
            hop=hop.label,
            route=label,
            rule=rule,
            why=why,
            seconds=self.down_for,
        )


def blame(chain: Chain, failure: Failure) -> tuple[Hop, str] | None:
    """
    The hop a failed attempt through C{chain} failed at, and why (printable,
    escaped once: the client's errors escape what they quote);
    C{None} when the failure is the destination's answer (the last hop's
    failure reply) or a cancellation, which are passed on as they are.
    """
    if failure.check(defer.CancelledError):
        return None
    exc = failure.value
    if isinstance(exc, HopFailed):
        inner = exc.failure.value
        index = exc.index
        if not isinstance(inner, SOCKS5Error):
            # Not the hop before's answer about this one: the hop before it
            # refused our login, broke the protocol, closed, or failed TLS
            # (the connection to it lost with a TLS error): it is at fault.
            # (For the first hop, its own endpoint's failure: itself.)
            index = max(index - 1, 0)
        return chain[index], printable(exc.failure.getErrorMessage() or type(inner).__name__)
    if isinstance(exc, SOCKS5Error):
        return None
    return chain[-1], printable(failure.getErrorMessage() or type(exc).__name__)


def connect(
    reactor: Any,
    upstreams: Upstreams,
    route: Route,
    rule: str,
    host: str,
    port: int,
    timeout: float,
    outgoing: Mapping[int, str],
    listening: Callable[[Address], None] | None = None,
    resolver: IHostnameResolver | None = None,
) -> defer.Deferred[Routed]:
    """
    Connect to C{host}:C{port} through C{route}'s chains, one after another
    (those marked down last: see L{Upstreams.order}), and fire with the
    first tunnel opened.  A chain that fails is marked down and the next
    tried; the destination's answer through a chain (a failure reply from
    the last hop) ends the attempt with L{Answered}.  When every chain
    failed, L{AllRoutesFailed}.  Cancelling cancels the attempt under way.
    C{resolver} resolves a first hop given by name (default: the reactor's).

    With C{listening}, the request is a BIND for the peer C{host} names,
    made by the last hop (through chains that end with a SOCKS5 hop: an
    HTTP proxy cannot BIND, and a route with no such chain is answered
    X'07'): C{listening} gets the last hop's first reply, from when on
    there is no failover, and the result comes when the peer connects.
    """
    chains = upstreams.order(route.chains)
    if listening is not None:
        chains = [chain for chain in chains if chain[-1].scheme == "socks5"]
        if not chains:
            why = "BIND through an HTTP proxy is not possible"
            return defer.fail(Answered(route.chains[0], Reply.COMMAND_NOT_SUPPORTED, why))
    listened: list[bool] = []
    tried: list[tuple[str, str]] = []
    current: list[defer.Deferred[Any]] = []

    def cancel(_: defer.Deferred[Routed]) -> None:
        if current:
            current[0].cancel()

    result: defer.Deferred[Routed] = defer.Deferred(cancel)

    def attempt(index: int) -> None:
        if result.called:
            return
        if index == len(chains):
            upstreams.route_failures[rule] += 1
            result.errback(AllRoutesFailed(tried))
            return
        chain = chains[index]

        def bound(address: Address) -> None:
            listened.append(True)
            assert listening is not None
            listening(address)

        try:
            endpoint = endpoint_for(reactor, chain, host, port, timeout, outgoing, resolver)
            if listening is not None:
                assert isinstance(endpoint, SOCKS5ClientEndpoint)
                d = endpoint.bind(_FACTORY, bound)
            else:
                d = endpoint.connect(_FACTORY)
        except Exception:
            d = defer.fail()
        current[:] = [d]

        def opened(protocol: Any) -> None:
            transport = protocol.transport
            if result.called:  # given up meanwhile
                transport.loseConnection()
                return
            upstreams.tunnels[(rule, chain_label(chain))] += 1
            result.callback(Routed(protocol, transport.bound, chain))

        def failed(failure: Failure) -> None:
            if result.called:
                return
            fault = blame(chain, failure)
            if fault is None or listened:
                # (Once a BIND's first reply is out, there is no other way.)
                exc = failure.value
                if isinstance(exc, SOCKS5Error):
                    failure = Failure(Answered(chain, exc.code, printable(str(exc))))
                result.errback(failure)
                return
            hop, why = fault
            upstreams.mark_down(chain, hop, rule, why)
            tried.append((chain_label(chain), why if len(chain) == 1 else f"at {hop.label}: {why}"))
            attempt(index + 1)

        d.addCallbacks(opened, failed)

    attempt(0)
    return result
