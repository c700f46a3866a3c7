"""
A session's username/password login (RFC 1929), through twisted.cred.

The credentials go to the portal as the client sent them (bytes); the gate
bounds how many logins one client address has in progress (a flood of slow
hash checks from one address cannot lock others out).  Reading goes on while
the portal decides, so a client that leaves is seen and its check cancelled
(see L{socks5twist.session}).  One line per failed attempt names the username
tried (escaped), never the password.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.cred.credentials import UsernamePassword
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from .auth import ISOCKSUser
from .connection import CredentialsReceived, ServerConnection
from .gate import Refusal
from .logsafe import field, why
from .relay import send_now
from .states import State

if TYPE_CHECKING:
    from .addresses import IPAddress
    from .factory import SOCKS5ServerFactory

__all__ = ["PasswordLogin"]


class PasswordLogin:
    """The session's RFC 1929 steps (a mixin of the session)."""

    log: Logger
    factory: SOCKS5ServerFactory
    connection: ServerConnection
    transport: Any
    client_ip: IPAddress | None
    client_text: str
    user: str | None
    _pending: defer.Deferred[Any] | None
    _logout: Any

    if TYPE_CHECKING:

        @property
        def state(self) -> State: ...
        def close(self, outcome: str) -> None: ...
        def unexpected(self, failure: Failure, phase: str) -> None: ...
        def _process(self) -> None: ...

    def _authenticate(self, request: CredentialsReceived) -> None:
        # Reading goes on meanwhile (see the module docstring): a client that
        # leaves is seen, and its check cancelled.
        factory = self.factory
        login = factory.gate.admit_login(self.client_ip, self.client_text)
        if isinstance(login, Refusal):
            send_now(self.transport, self.connection.login_decided(False))
            self.close(login.outcome)
            return
        credentials = UsernamePassword(request.username, request.password)
        assert factory.portal is not None
        d = factory.portal.login(credentials, None, ISOCKSUser)
        # Fires whatever happens (a cancelled login too): the count is exact.
        d.addBoth(_passing, login.release)
        self._pending = d
        d.addCallbacks(self._authenticated, self._unauthenticated, errbackArgs=(request.username,))
        d.addErrback(self.unexpected, "authentication")

    def _authenticated(self, result: tuple[Any, Any, Any]) -> None:
        _, avatar, logout = result
        if self.state is not State.AUTHENTICATING:
            logout()
            return
        self._pending = None
        self.user = avatar.name
        self.factory.stats.logins[("password", "none")] += 1
        self._logout = logout
        send_now(self.transport, self.connection.login_decided(True))
        self._process()

    def _unauthenticated(self, failure: Failure, username: bytes) -> None:
        if failure.check(defer.CancelledError) or self.state is not State.AUTHENTICATING:
            return
        self._pending = None
        # One line per attempt, naming the username tried (escaped), so
        # that fail2ban-style tools can act on it; never the password.
        self.log.info(
            "authentication failed for {client} user={user}: {why}",
            client=self.client_text,
            user=field(username),
            why=why(failure),
        )
        self.factory.auth_failed()
        send_now(self.transport, self.connection.login_decided(False))
        self.close("authentication failed")


def _passing(result: Any, call: Callable[[], None]) -> Any:
    call()
    return result
