"""
GSSAPI (RFC 1961) for the client: what the endpoint is configured with
(L{GSSAPISettings}), what the negotiation needs of an initiator
(L{InitiatorLike}), and the protected stream (L{ProtectedStream}) that
wraps and unwraps every byte after the protection level is agreed.

Nothing here imports C{gssapi}: the real initiator is
L{socks5twist.gss.Initiator}, built only when a connection needs it, so
that the negotiation's tests hand in a fake with the same methods, and a
client that never speaks GSSAPI never needs the package.

The context's first step (L{prepare}) may ask the KDC for a ticket, and so
may block for seconds: the endpoint runs it in the reactor's thread pool
before it connects (L{GSSAPISettings.threaded}).  Every later step is local.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from .. import gsswire
from ..codec import MalformedMessage
from ..gsswire import Mtyp, Protection
from ..logsafe import escape
from .errors import GSSAPIAborted, GSSAPIError, ProtectionLevelRefused, ProxyProtocolError

__all__ = [
    "GSSAPIExchange",
    "GSSAPISettings",
    "InitiatorLike",
    "PreparedGSSAPI",
    "ProtectedStream",
    "ProtectorLike",
    "allowed_levels",
    "prepare",
    "settings_for",
]


class ProtectorLike(Protocol):
    """What L{socks5twist.gss.Protector} does: one context's messages at one level."""

    def wrap(self, data: bytes) -> list[bytes]: ...

    def unwrap(self, token: bytes) -> bytes: ...


class InitiatorLike(Protocol):
    """
    What the negotiation asks of the client's side of a context
    (L{socks5twist.gss.Initiator}); each method raises
    L{socks5twist.gss.GSSFailure} (or any exception: the negotiation turns
    it into L{GSSAPIError}).
    """

    @property
    def complete(self) -> bool: ...

    def step(self, token: bytes | None) -> bytes | None: ...

    def level_request(self, level: Protection, nec: bool) -> bytes: ...

    def level_answer(self, token: bytes, nec: bool) -> int: ...

    def protector(self, level: Protection) -> ProtectorLike: ...


def _real_initiator(target: str) -> InitiatorLike:
    from ..gss import Initiator

    return Initiator(target)


def allowed_levels(asked: Protection) -> frozenset[Protection]:
    """
    The answers a client that asked for C{asked} accepts: that level or a
    stronger one (the server chooses, RFC 1961 section 4; a weaker one would
    be a downgrade).  Never selective (3): this client does not choose
    per message.
    """
    levels = (Protection.CLEAR, Protection.INTEGRITY, Protection.CONFIDENTIALITY)
    return frozenset(level for level in levels if level >= asked)


@dataclass(frozen=True)
class GSSAPISettings:
    """
    How the client speaks GSSAPI to the proxy.

    @ivar target: the proxy's service: a host-based name (C{rcmd@proxy.
        example.org}) or a principal (C{rcmd/proxy.example.org@REALM}).
    @ivar protection: the level asked for; the proxy may answer with it or a
        stronger one (L{allowed_levels}), anything else is refused.
    @ivar nec: send and read the level as one unwrapped byte, as the NEC
        reference implementation does (only for proxies that want it).
    @ivar initiator: makes the initiator for C{target} (tests hand in a fake).
    @ivar in_thread: whether the first context step (L{prepare}) runs in the
        reactor's thread pool, as it may wait for the KDC; C{None}: for the
        real initiator only (a fake never talks to a KDC).  Without threads
        (a reactor that has none: tests' C{MemoryReactor}) it runs when the
        proxy selects GSSAPI, in the reactor's thread.
    """

    target: str
    protection: Protection = Protection.CONFIDENTIALITY
    nec: bool = False
    initiator: Callable[[str], InitiatorLike] = field(default=_real_initiator, compare=False)
    in_thread: bool | None = field(default=None, compare=False)

    @property
    def threaded(self) -> bool:
        """Whether the first step is for a thread (L{in_thread}, its default resolved)."""
        if self.in_thread is None:
            return self.initiator is _real_initiator
        return self.in_thread

    def __post_init__(self) -> None:
        if not self.target or any(c.isspace() or not c.isprintable() for c in self.target):
            raise ValueError(f"gssapi: not a service name: {self.target!r}")
        if self.protection not in allowed_levels(Protection.CLEAR):
            raise ValueError(f"gssapi: protection {self.protection!r} cannot be asked for")


def settings_for(
    gssapi: str | GSSAPISettings | None, protection: Protection | None, nec: bool | None
) -> GSSAPISettings | None:
    """
    The endpoint's C{gssapi=}, C{gssapi_protection=} and C{gssapi_nec=} as
    one L{GSSAPISettings} (C{None}: no GSSAPI); C{ValueError} for a
    contradiction, L{socks5twist.gss.MissingGSSAPI} (naming C{pip install
    'socks5twist[gssapi]'}) when the real initiator is wanted without the
    C{gssapi} package, now rather than at the first connection.
    """
    if gssapi is None:
        if protection is not None or nec is not None:
            raise ValueError("gssapi_protection and gssapi_nec need gssapi (the proxy's service)")
        return None
    if isinstance(gssapi, GSSAPISettings):
        if protection is not None or nec is not None:
            raise ValueError("give the protection and NEC mode in the GSSAPISettings")
        settings = gssapi
    else:
        level = Protection.CONFIDENTIALITY if protection is None else Protection(protection)
        settings = GSSAPISettings(gssapi, level, bool(nec))
    if settings.initiator is _real_initiator:
        from ..gss import load

        load()
    return settings


def gss_error(e: Exception) -> GSSAPIError:
    """Our side's GSSAPI failure (the library's text, escaped)."""
    return GSSAPIError(escape(str(e) or type(e).__name__))


@dataclass(frozen=True)
class PreparedGSSAPI:
    """
    A context after its first step, ready for the proxy (L{prepare}).

    Ownership: the thread that ran L{prepare} never touches C{initiator}
    again once it returned; from then on it is the reactor thread's alone
    (python-gssapi's contexts are not for two threads at once).

    @ivar token: our first context token (C{None}: none to send).
    """

    settings: GSSAPISettings
    initiator: InitiatorLike
    token: bytes | None


def prepare(settings: GSSAPISettings) -> PreparedGSSAPI:
    """
    The initiator for C{settings.target} and its first step, which may ask
    the KDC for the proxy's ticket (or, with a client keytab, for a TGT
    first): it may block, for as long as MIT's KDC timeouts.  Does not
    depend on the proxy, so it may run before connecting, in any one
    thread.  Every failure is a L{GSSAPIError} (the library's text, escaped).
    """
    try:
        initiator = settings.initiator(settings.target)
        token = initiator.step(None)
    except Exception as e:
        raise gss_error(e) from None
    return PreparedGSSAPI(settings, initiator, token)


class GSSAPIExchange:
    """
    The client's side of RFC 1961 sections 3 and 4 for one negotiation: the
    context's tokens and the protection level, as messages to send.  Every
    failure is a L{GSSAPIError} (the library's own exceptions do not escape).
    """

    __slots__ = ("_first", "_initiator", "settings")

    def __init__(self, prepared: PreparedGSSAPI) -> None:
        self.settings = prepared.settings
        self._initiator = prepared.initiator
        self._first = prepared.token

    def step(self, token: bytes | None) -> tuple[bytes, bool]:
        """
        What to send after the proxy's C{token} (C{None}: the first step,
        the one L{prepare} made), and whether the context is complete: then
        the level's request is part of it (after our last token, if any).
        """
        initiator, settings = self._initiator, self.settings
        try:
            out = self._first if token is None else initiator.step(token)
            message = gsswire.build(Mtyp.AUTHENTICATION, out) if out else b""
            if not initiator.complete:
                if not message:
                    raise GSSAPIError("the context is incomplete, with no token to send")
                return message, False
            asked = initiator.level_request(settings.protection, settings.nec)
            return message + gsswire.build(Mtyp.PROTECTION, asked), True
        except GSSAPIError:
            raise
        except Exception as e:
            raise gss_error(e) from None

    def level_answered(self, token: bytes) -> ProtectedStream | None:
        """
        The stream at the level the proxy chose (C{None}: clear, nothing
        wrapped); L{ProtectionLevelRefused} if this client does not allow it.
        """
        asked = self.settings.protection
        try:
            level = self._initiator.level_answer(token, self.settings.nec)
            if level not in allowed_levels(asked):
                raise ProtectionLevelRefused(level, asked)
            chosen = Protection(level)
            if not chosen.wraps:
                return None
            return ProtectedStream(self._initiator.protector(chosen), chosen)
        except GSSAPIError:
            raise
        except Exception as e:
            raise gss_error(e) from None


class ProtectedStream:
    """
    RFC 1961 section 5 over a stream: each write becomes C{mtyp=3} messages
    of wrapped tokens; what is read is cut into messages and unwrapped.

    Holds at most one incomplete message (the L{gsswire.Deframer}'s bound).
    Once a message fails, the stream is broken: nothing more is opened.
    """

    __slots__ = ("_deframer", "_protector", "level")

    def __init__(self, protector: ProtectorLike, level: Protection) -> None:
        self._protector = protector
        self._deframer = gsswire.Deframer()
        self.level = level

    def seal(self, data: bytes) -> bytes:
        """The messages that carry C{data}; L{GSSAPIError} if wrapping fails."""
        try:
            tokens = self._protector.wrap(data)
        except Exception as e:
            raise gss_error(e) from None
        return b"".join(gsswire.build(Mtyp.MESSAGE, token) for token in tokens)

    def open(self, data: bytes) -> bytes:
        """
        The plaintext of the messages that C{data} completes.

        @raise GSSAPIAborted: the proxy sent an abort.
        @raise ProxyProtocolError: a message that is not C{ver=1, mtyp=3}.
        @raise GSSAPIError: a token that does not unwrap.
        """
        try:
            tokens = self._deframer.feed(data)
        except gsswire.Aborted:
            raise GSSAPIAborted() from None
        except MalformedMessage as e:
            raise ProxyProtocolError(f"malformed protected message: {e.why}") from None
        try:
            return b"".join([self._protector.unwrap(token) for token in tokens])
        except Exception as e:
            raise gss_error(e) from None

    @property
    def pending(self) -> int:
        """Bytes of an incomplete message held."""
        return self._deframer.pending
