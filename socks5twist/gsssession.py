"""
A session's GSSAPI authentication (RFC 1961), between the method and the request.

The steps, as the connection's table has them: the client's context tokens
are taken by the session's L{socks5twist.gss.Acceptor} (each answered, until
the context is made); the initiator's principal then goes through the portal
(L{socks5twist.auth.gssapi_portal}: the operator's realm makes its avatar, as
for a username/password login); then the client asks for a protection level
and the server answers the one it chooses of those the operator allows
(C{--gssapi-protection}).  At integrity or confidentiality, the session's
transport becomes a L{socks5twist.gsstransport.ProtectedTransport} and what
the client sends goes through an L{socks5twist.gsstransport.Unprotector}
first: the request, the reply and the tunnel are then wrapped messages, and
UDP datagrams too (the association is handed the protector).

Every failure (a token the library refuses, a principal the realm refuses,
a level that does not unwrap, a message that does not) is one escaped log
line, RFC 1961's abort (C{01 FF}) where the negotiation is still going on,
and a close; never a traceback, whatever the bytes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from .auth import GSSAPIPrincipal, ISOCKSUser
from .codec import Method
from .connection import GSSTokenReceived, ProtectionRequested, ServerConnection
from .connection import State as Wire
from .gss import Acceptor, GSSFailure, Protector, choose_level
from .gsstransport import ProtectedTransport, Unprotector
from .gsswire import LEVEL_NAMES, Protection
from .logsafe import field, printable, why
from .relay import send_now

if TYPE_CHECKING:
    from .factory import SOCKS5ServerFactory

__all__ = ["GSSAPINegotiation"]


class GSSAPINegotiation:
    """The session's GSSAPI steps (a mixin of the session: see the module docstring)."""

    log: Logger
    factory: SOCKS5ServerFactory
    connection: ServerConnection
    transport: Any
    client_text: str
    user: str | None
    method: Method | None
    gss: Acceptor | None
    protection: Protection | None
    protector: Protector | None
    unprotector: Unprotector | None
    _pending: defer.Deferred[Any] | None
    _logout: Any

    if TYPE_CHECKING:

        def close(self, outcome: str) -> None: ...
        def abort(self, outcome: str) -> None: ...
        def unexpected(self, failure: Failure, phase: str) -> None: ...
        def _process(self) -> None: ...

    def gss_selected(self) -> None:
        """The server chose GSSAPI: a context to accept the client's tokens."""
        factory = self.factory
        assert factory.gssapi is not None
        self.gss = Acceptor(factory.gss_credentials, factory.gssapi)
        self.method = Method.GSSAPI
        send_now(self.transport, self.connection.select_method(Method.GSSAPI))

    def gss_token(self, event: GSSTokenReceived) -> None:
        acceptor = self.gss
        assert acceptor is not None
        try:
            out = acceptor.step(event.token)
            if not acceptor.complete:
                if out is None:
                    raise GSSFailure("the context is not made and has nothing to send")
                send_now(self.transport, self.connection.gss_continue(out))
                return
            principal = acceptor.principal()
        except GSSFailure as e:
            self.gss_refused("authentication failed", str(e))
            return
        send_now(self.transport, self.connection.gss_established(out))
        portal = self.factory.gss_portal
        assert portal is not None
        d = portal.login(GSSAPIPrincipal(principal), None, ISOCKSUser)
        self._pending = d
        d.addCallbacks(self._gss_logged_in, self._gss_login_refused, errbackArgs=(principal,))
        d.addErrback(self.unexpected, "GSSAPI login")

    def _gss_logged_in(self, result: tuple[Any, Any, Any]) -> None:
        _, avatar, logout = result
        if self.connection.state is not Wire.GSS_LOGIN:
            logout()
            return
        self._pending = None
        self.user = avatar.name
        self._logout = logout
        self.connection.gss_login_decided(True)
        self._process()

    def _gss_login_refused(self, failure: Failure, principal: str) -> None:
        if failure.check(defer.CancelledError) or self.connection.state is not Wire.GSS_LOGIN:
            return
        self._pending = None
        self.log.info(
            "GSSAPI login refused for {client} user={user}: {why}",
            client=self.client_text,
            user=field(principal),
            why=why(failure),
        )
        self.factory.auth_failed()
        send_now(self.transport, self.connection.gss_login_decided(False))
        self.close("GSSAPI login refused")

    def gss_level(self, event: ProtectionRequested) -> None:
        acceptor = self.gss
        settings = self.factory.gssapi
        assert acceptor is not None and settings is not None
        # A wrapped token is never one byte: one byte is the NEC form.
        nec = len(event.token) == 1
        if nec and not settings.allow_nec:
            self.gss_refused(
                "protection level refused",
                "the level came unwrapped (the NEC form), which --gssapi-nec would allow",
            )
            return
        try:
            asked = acceptor.requested_level(event.token, nec)
            level = choose_level(asked, settings.levels)
            if level.wraps and not acceptor.detects_replays:
                raise GSSFailure(
                    f"the client's context does not detect replays, which {LEVEL_NAMES[level]}"
                    " needs (a replayed message would be taken twice)"
                )
            answer = acceptor.level_answer(level, nec)
        except GSSFailure as e:
            self.gss_refused("protection level refused", str(e))
            return
        send_now(self.transport, self.connection.level_chosen(answer))
        self.protection = level
        self.factory.stats.logins[("gssapi", LEVEL_NAMES[level])] += 1
        if not level.wraps:
            return
        protector = self.protector = acceptor.protector(level)
        self.transport = ProtectedTransport(self.transport, protector)
        unprotector = self.unprotector = Unprotector(protector)
        # What the client pipelined after its level is wrapped already.
        early = self.connection.take_data()
        if early:
            try:
                plain = unprotector.feed(early)
            except GSSFailure as e:
                self.gss_broken(e)
                return
            if plain:
                self.connection.receive_data(plain)

    def gss_refused(self, outcome: str, reason: str) -> None:
        """The negotiation failed: one line, RFC 1961's abort, close."""
        self.log.info(
            "GSSAPI {outcome} for {client}: {why}",
            outcome=outcome,
            client=self.client_text,
            why=printable(reason),
        )
        self.factory.auth_failed()
        send_now(self.transport, self.connection.gss_failed())
        self.close(f"GSSAPI {outcome}")

    def gss_broken(self, e: GSSFailure) -> None:
        """A message after the level did not unwrap: one line, and both sides reset."""
        self.log.info(
            "GSSAPI message from {client} refused: {why}",
            client=self.client_text,
            why=printable(str(e)),
        )
        self.abort("GSSAPI message refused")
