"""
GSSAPI (RFC 1961) over python-gssapi: the one module that imports C{gssapi}.

The C{gssapi} package (MIT Kerberos underneath) is an optional extra
(C{pip install 'socks5twist[gssapi]'}): nothing imports this module unless
GSSAPI is configured, and L{load} turns its absence into one clear error.
Nothing here does I/O or touches Twisted: the server's session and the
client's endpoint feed it tokens and take tokens back, so both sides share
one implementation of what RFC 1961 asks of the context, the protection
level and each protected message.

What a hostile peer can do here is bounded before it gets here: tokens come
framed by L{socks5twist.gsswire} (at most 65535 bytes each), and every
failure of the library is turned into L{GSSFailure}, whose text is the
library's (escaped where it is logged).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

from .gsswire import LEVEL_NAMES, MAX_TOKEN, Protection

__all__ = [
    "Acceptor",
    "GSSFailure",
    "Initiator",
    "MissingGSSAPI",
    "Protector",
    "ServerSettings",
    "choose_level",
    "load",
]

# The service's name clients ask for by default: curl's and Dante's.
DEFAULT_SERVICE = "rcmd"
# A wrapped message must fit the two octets of LEN; krb5's overhead is well
# under 100 bytes, so a plaintext chunk of 32 KiB always fits.
MAX_CHUNK = 32 * 1024
# The most context tokens a server takes from one client.
MAX_ROUNDS = 8


class MissingGSSAPI(Exception):
    """The C{gssapi} package is not installed."""


class GSSFailure(Exception):
    """A GSSAPI step failed; C{str()} says why (the library's text, raw)."""


def load() -> Any:
    """The C{gssapi} module, or L{MissingGSSAPI} saying how to get it."""
    try:
        import gssapi
    except ImportError as e:
        raise MissingGSSAPI(
            "GSSAPI needs the gssapi package: pip install 'socks5twist[gssapi]'"
            " (it builds against MIT Kerberos: apt-get install libkrb5-dev)"
        ) from e
    return gssapi


def _raising(context: Any) -> Any:
    """
    C{context}, made to raise a failed step's error from C{step()} itself.

    By default python-gssapi returns the error token of a failed step and
    raises the error from the next call on the context (C{complete},
    C{wrap}, ...), outside the C{try} that turns it into L{GSSFailure}:
    RFC 1961 sends an abort (C{01 FF}), not the library's error token.
    """
    context.__DEFER_STEP_ERRORS__ = False
    return context


def _step(context: Any, token: bytes | None) -> bytes | None:
    """One context step of either side: the token to send, bounded, or L{GSSFailure}."""
    try:
        out = context.step(token)
    except Exception as e:
        raise _failure(e) from e
    if out is not None and len(out) > MAX_TOKEN:
        raise GSSFailure(f"a context token of {len(out)} bytes does not fit a message")
    return bytes(out) if out is not None else None


def _failure(e: Exception) -> GSSFailure:
    gen = getattr(e, "gen_message", None)
    text = gen() if callable(gen) else str(e)
    return GSSFailure(" ".join(str(text).split()) or type(e).__name__)


@dataclass(frozen=True)
class ServerSettings:
    """
    What the operator configured (C{--gssapi-*}).

    @ivar service: the first part of the service principal clients ask for
        (C{rcmd} asks for C{rcmd/HOST@REALM}); a context established for
        another service is refused.
    @ivar keytab: where the service's keys are; C{None}: the environment's
        (C{KRB5_KTNAME}, else the system's).
    @ivar levels: the protection levels the server may choose.
    @ivar allow_nec: accept the level as one unwrapped byte (the NEC
        reference implementation's and curl's C{--socks5-gssapi-nec}).
    """

    service: str = DEFAULT_SERVICE
    keytab: str | None = None
    levels: frozenset[Protection] = field(
        default_factory=lambda: frozenset({Protection.INTEGRITY, Protection.CONFIDENTIALITY})
    )
    allow_nec: bool = False

    def describe_levels(self) -> str:
        return ", ".join(LEVEL_NAMES[level] for level in sorted(self.levels))


def choose_level(requested: int, allowed: frozenset[Protection]) -> Protection:
    """
    The level the server answers: the one asked for when allowed, else the
    strongest allowed (RFC 1961 section 4: the server chooses; a client that
    cannot live with the answer closes).  Selective (3) leaves the choice to
    the server: the strongest allowed.
    """
    if requested in allowed and requested != Protection.SELECTIVE:
        return Protection(requested)
    return max(allowed)


# No mechanism's wrapped message is shorter: Kerberos' header alone is 16
# bytes (RFC 4121 section 4.2.6.2), as is an NTLM signature.
MIN_WRAPPED = 16


def _unwrap_aead(context: Any) -> Any:
    """
    python-gssapi's C{unwrap_aead} for C{context}, or C{None}: the library
    lacks the extension, or C{context} is not one of python-gssapi's (a
    test's fake, which has its own C{unwrap}).
    """
    gssapi = sys.modules.get("gssapi")
    if gssapi is None or not isinstance(context, gssapi.raw.SecurityContext):
        return None
    return getattr(gssapi.raw, "unwrap_aead", None)


def _unwrap(context: Any, token: bytes) -> Any:
    """
    C{context.unwrap(token)} (the message, and whether it was encrypted),
    without python-gssapi's leak; L{GSSFailure} if it does not unwrap.

    A replayed, late or early message is refused by MIT with a status that
    still hands back the plaintext; python-gssapi (1.12) raises that status
    from C{unwrap} and never frees the plaintext: up to 64 KiB lost for
    each replay a peer sends, for as long as the process runs.  Its
    C{unwrap_aead} (the same token, with no associated data) allocates
    nothing: MIT decrypts in place, in the very buffer it is handed, which
    python-gssapi takes from the C{bytes} object itself, immutable or not:
    so it gets a copy of its own, used once.  Tokens too short to be one are
    refused before the library sees them (CPython shares its one-byte
    C{bytes} objects).
    """
    unwrap_aead = _unwrap_aead(context)
    try:
        if unwrap_aead is None:
            return context.unwrap(token)
        if len(token) < MIN_WRAPPED:
            raise GSSFailure(f"a wrapped message of {len(token)} bytes (at least {MIN_WRAPPED})")
        return unwrap_aead(context, bytes(bytearray(token)))
    except GSSFailure:
        raise
    except Exception as e:
        raise _failure(e) from e


class Protector:
    """
    Wraps and unwraps the messages of one established context at one level.

    At confidentiality every message must arrive encrypted: one that was
    only signed is refused (else a man in the middle who cannot read could
    still downgrade what is sent in the clear).
    """

    __slots__ = ("_context", "_encrypt", "level")

    def __init__(self, context: Any, level: Protection) -> None:
        self._context = context
        self.level = level
        self._encrypt = level is Protection.CONFIDENTIALITY

    def wrap(self, data: bytes) -> list[bytes]:
        """The wrapped tokens of C{data}, in chunks whose tokens fit a message."""
        context = self._context
        encrypt = self._encrypt
        try:
            if len(data) <= MAX_CHUNK:
                return [context.wrap(data, encrypt).message]
            view = memoryview(data)
            return [
                context.wrap(bytes(view[i : i + MAX_CHUNK]), encrypt).message
                for i in range(0, len(data), MAX_CHUNK)
            ]
        except Exception as e:
            raise _failure(e) from e

    def wrap_one(self, data: bytes) -> bytes:
        """C{data} as one token (a datagram is never cut); L{ValueError} if too big."""
        try:
            token = bytes(self._context.wrap(data, self._encrypt).message)
        except Exception as e:
            raise _failure(e) from e
        if len(token) > MAX_TOKEN:
            raise ValueError(f"a wrapped message of {len(token)} bytes")
        return token

    def unwrap(self, token: bytes) -> bytes:
        """The message in C{token}, or L{GSSFailure}."""
        result = _unwrap(self._context, token)
        if self._encrypt and not result.encrypted:
            raise GSSFailure("a message was not encrypted at the confidentiality level")
        return bytes(result.message)


def _level_token(context: Any, level: int) -> bytes:
    try:
        return bytes(context.wrap(bytes((level,)), False).message)
    except Exception as e:
        raise _failure(e) from e


def _unwrap_level(context: Any, token: bytes) -> int:
    message = _unwrap(context, token).message
    if len(message) != 1:
        raise GSSFailure(f"a protection level of {len(message)} bytes (expected 1)")
    return int(message[0])


class Acceptor:
    """
    The server's side: one per session, over the credentials L{acceptor_credentials}
    acquired once at start.
    """

    __slots__ = ("_context", "_gssapi", "_settings", "rounds")

    def __init__(self, credentials: Any, settings: ServerSettings) -> None:
        self.rounds = 0
        gssapi = load()
        self._gssapi = gssapi
        self._settings = settings
        self._context = _raising(gssapi.SecurityContext(creds=credentials, usage="accept"))

    def step(self, token: bytes) -> bytes | None:
        """
        The token to send back (C{None}: nothing to send); L{complete} says
        whether the context is established.  Raises L{GSSFailure}, also past
        L{MAX_ROUNDS} tokens (Kerberos needs one; a client that keeps the
        context going only keeps the server busy).
        """
        self.rounds += 1
        if self.rounds > MAX_ROUNDS:
            raise GSSFailure(f"more than {MAX_ROUNDS} context tokens")
        return _step(self._context, token)

    @property
    def complete(self) -> bool:
        return bool(self._context.complete)

    @property
    def detects_replays(self) -> bool:
        """
        Whether the client's context checks for replayed messages (the
        initiator asks for it: curl, Dante and our client endpoint do).
        Without it a man in the middle could send a wrapped message twice.
        """
        flags = self._gssapi.RequirementFlag
        return flags.replay_detection in self._context.actual_flags

    def principal(self) -> str:
        """
        Who the client is (C{alice@EXAMPLE.ORG}), once complete; refuses an
        anonymous initiator and a context made for another service.
        """
        context = self._context
        flags = self._gssapi.RequirementFlag
        if flags.anonymity in context.actual_flags:
            raise GSSFailure("anonymous initiators are not accepted")
        try:
            target = str(context.target_name) if context.target_name is not None else ""
            name = str(context.initiator_name)
        except Exception as e:
            raise _failure(e) from e
        service = target.split("/", 1)[0].split("@", 1)[0]
        if target and service != self._settings.service:
            raise GSSFailure(
                f"the client asked for service {target}, not {self._settings.service}/..."
            )
        if not name or "@" not in name:
            raise GSSFailure("the initiator has no principal name")
        return name

    def requested_level(self, token: bytes, nec: bool) -> int:
        """The level the client asks for (section 4): wrapped, or one byte (NEC)."""
        if nec:
            return token[0]
        return _unwrap_level(self._context, token)

    def level_answer(self, level: Protection, nec: bool) -> bytes:
        """The server's answer: the chosen level, wrapped as the request was."""
        return bytes((level,)) if nec else _level_token(self._context, level)

    def protector(self, level: Protection) -> Protector:
        return Protector(self._context, level)


def acceptor_credentials(settings: ServerSettings) -> Any:
    """
    The acceptor credentials for every session, acquired once at start;
    raises L{GSSFailure} (with the library's reason) when the keytab cannot
    be used.  Any key in the keytab may accept: L{Acceptor.principal} then
    checks the service the client asked for.
    """
    gssapi = load()
    store = {"keytab": settings.keytab} if settings.keytab else None
    try:
        return gssapi.Credentials(usage="accept", store=store)
    except Exception as e:
        raise _failure(e) from e


class Initiator:
    """
    The client's side: establishes a context with C{target} (a host-based
    name, C{rcmd@proxy.example.org}, or a principal, C{rcmd/proxy@REALM}) from
    the default credentials (the ticket cache) or C{credentials}.
    """

    __slots__ = ("_context",)

    def __init__(self, target: str, credentials: Any = None, delegate: bool = False) -> None:
        gssapi = load()
        names = gssapi.NameType
        kind = names.kerberos_principal if "/" in target else names.hostbased_service
        flag = gssapi.RequirementFlag
        flags = [
            flag.mutual_authentication,
            flag.replay_detection,
            flag.out_of_sequence_detection,
            flag.integrity,
            flag.confidentiality,
        ]
        if delegate:
            flags.append(flag.delegate_to_peer)
        try:
            name = gssapi.Name(target, kind)
            self._context = _raising(
                gssapi.SecurityContext(name=name, creds=credentials, usage="initiate", flags=flags)
            )
        except Exception as e:
            raise _failure(e) from e

    def step(self, token: bytes | None) -> bytes | None:
        """
        The token to send (C{None}: nothing), from the server's last one
        (C{None} at first); L{complete} says whether the context is
        established.  Raises L{GSSFailure}.
        """
        return _step(self._context, token)

    @property
    def complete(self) -> bool:
        return bool(self._context.complete)

    def level_request(self, level: Protection, nec: bool) -> bytes:
        return bytes((level,)) if nec else _level_token(self._context, level)

    def level_answer(self, token: bytes, nec: bool) -> int:
        if nec:
            if len(token) != 1:
                raise GSSFailure(f"an unwrapped protection level of {len(token)} bytes")
            return token[0]
        return _unwrap_level(self._context, token)

    def protector(self, level: Protection) -> Protector:
        return Protector(self._context, level)
