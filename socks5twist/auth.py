"""
Username/password authentication (RFC 1929) through twisted.cred.

The session hands the checkers the exact bytes the client sent, as a
L{UsernamePassword} with C{bytes} fields; nothing is decoded on the way, so a
checker decides what an empty or non-UTF-8 field means.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from twisted.cred import error
from twisted.cred.checkers import (
    ICredentialsChecker,
    InMemoryUsernamePasswordDatabaseDontUse,
)
from twisted.cred.credentials import ICredentials, IUsernamePassword
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer
from zope.interface import Attribute, Interface, implementer

from .gss import ServerSettings


class ISOCKSUser(Interface):
    """The avatar of an authenticated SOCKS client."""

    name = Attribute("The user's name, as text, for logs and rules.")


@implementer(ISOCKSUser)
@dataclass(frozen=True)
class SOCKSUser:
    """A user who passed a checker; C{name} is the avatar ID decoded."""

    name: str


def avatar_name(avatarId: bytes | str) -> str:
    """A user's name as sessions, logs and rules know it (a checker's avatar ID decoded)."""
    if isinstance(avatarId, bytes):
        return avatarId.decode("utf-8", "backslashreplace")
    return str(avatarId)


@implementer(IRealm)
class SOCKSRealm:
    """A realm that makes a L{SOCKSUser} of whatever avatar ID a checker gives."""

    def requestAvatar(
        self, avatarId: Any, mind: object, *interfaces: Any
    ) -> tuple[Any, SOCKSUser, Any]:
        if ISOCKSUser not in interfaces:
            raise NotImplementedError("SOCKSRealm only provides ISOCKSUser")
        return ISOCKSUser, SOCKSUser(avatar_name(avatarId)), lambda: None


@implementer(ICredentialsChecker)
class AnyOfCheckers:
    """
    Accept credentials that any one of several checkers accepts.

    A L{Portal} keeps one checker per credentials interface, so several
    C{--auth} options would otherwise silently keep only the last.  Checkers
    are asked in order; the first to accept wins.
    """

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, checkers: Sequence[ICredentialsChecker]) -> None:
        self.checkers = list(checkers)

    @defer.inlineCallbacks
    def requestAvatarId(self, credentials: Any) -> Any:
        for checker in self.checkers:
            try:
                avatarId = yield defer.maybeDeferred(checker.requestAvatarId, credentials)
            except (error.UnauthorizedLogin, error.UnhandledCredentials):
                continue
            return avatarId
        raise error.UnauthorizedLogin()


def bytes_checker(checker: ICredentialsChecker) -> ICredentialsChecker:
    """
    Make a strcred checker compare the bytes a SOCKS client sends.

    C{memory:alice:secret} builds an in-memory database keyed by C{str}, while
    C{file:} compares C{bytes}; RFC 1929 carries bytes.  The in-memory database
    is rebuilt with UTF-8 encoded keys and values; other checkers either
    compare bytes already or decode for themselves.
    """
    if isinstance(checker, InMemoryUsernamePasswordDatabaseDontUse):
        converted = InMemoryUsernamePasswordDatabaseDontUse()
        for user, password in checker.users.items():
            converted.addUser(_encode(user), _encode(password))
        return converted
    return checker


def _encode(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8")


def portal_for_checkers(checkers: Sequence[ICredentialsChecker]) -> Portal:
    """A L{Portal} over L{SOCKSRealm} that accepts what any checker accepts."""
    portal = Portal(SOCKSRealm())
    portal.registerChecker(AnyOfCheckers([bytes_checker(c) for c in checkers]))
    return portal


class IGSSAPIPrincipal(ICredentials):
    """Credentials already proven by a GSSAPI context: the initiator's principal."""

    principal = Attribute("The initiator's principal as text, alice@EXAMPLE.ORG.")


@implementer(IGSSAPIPrincipal)
@dataclass(frozen=True)
class GSSAPIPrincipal:
    """The principal a GSSAPI context established (RFC 1961): nothing left to check."""

    principal: str


@implementer(ICredentialsChecker)
class GSSAPIPrincipalChecker:
    """
    Accepts a principal that a GSSAPI context proved, as its own avatar ID,
    so that a GSSAPI user reaches the realm (and its avatar, its logout)
    the way a username/password user does.
    """

    credentialInterfaces = (IGSSAPIPrincipal,)

    def requestAvatarId(self, credentials: Any) -> Any:
        return defer.succeed(credentials.principal)


def gssapi_portal(portal: Portal | None) -> Portal:
    """
    The portal GSSAPI logins go through: the operator's own (its realm makes
    the avatars of both kinds of users), with a checker for proven
    principals added, or one over L{SOCKSRealm} when there is none.
    """
    if portal is None:
        return Portal(SOCKSRealm(), [GSSAPIPrincipalChecker()])
    portal.registerChecker(GSSAPIPrincipalChecker())
    return portal


def gssapi_acceptance(settings: ServerSettings, portal: Portal | None) -> tuple[Any, Portal]:
    """
    What a server needs to accept GSSAPI: the acceptor credentials every
    session shares (acquired once; L{ValueError} when the keytab cannot
    accept), and the portal its logins go through (L{gssapi_portal}).
    """
    from .gss import GSSFailure, acceptor_credentials

    try:
        credentials = acceptor_credentials(settings)
    except GSSFailure as e:
        raise ValueError(f"GSSAPI cannot accept: {e}") from e
    return credentials, gssapi_portal(portal)
