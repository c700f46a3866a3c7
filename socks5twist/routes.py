"""
Routes as values: how an allow rule's requests leave this proxy.

A rule may send its CONNECT requests through upstream proxies (a L{Chain}
of L{Hop}s, in order: the first is reached directly, each next one through
the ones before it) with alternatives tried in order when one fails (a
L{Route} holds them), or, for direct connections, from an address of a pool
(C{egress}).  This module reads the rules file's spelling of them
(L{route_of}, L{parse_hop}, L{read_password_file}) and picks from an
egress pool (L{egress_for}); it does no I/O but reading a password file and
a bind test of each egress address.  Connecting through a route is
L{socks5twist.upstream}'s.

Credentials never leave a L{Hop} in text: its C{repr} and its C{label}
(what logs and metrics show) hide them.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from urllib.parse import unquote

from . import gsshops, tlshops
from .addresses import IPAddress
from .gsswire import LEVEL_NAMES, Protection
from .logsafe import escape, without_password
from .names import InvalidName, canonical, is_address

__all__ = [
    "SCHEMES",
    "Chain",
    "Hop",
    "Route",
    "RouteError",
    "chain_label",
    "egress_for",
    "parse_egress",
    "parse_hop",
    "read_password_file",
    "route_of",
]

# The schemes a hop may have: a SOCKS5 proxy (names go to it unresolved,
# C{socks5h} is the same), or an HTTP proxy that takes CONNECT; and each
# reached over TLS (C{socks5s}, C{https}).  Each gives (protocol, TLS).  A
# SOCKS5 scheme with C{+gssapi} (L{gsshops.SUFFIX}) is a Kerberised proxy.
SCHEMES = {
    "socks5": ("socks5", False),
    "socks5h": ("socks5", False),
    "http": ("http", False),
    "socks5s": ("socks5", True),
    "https": ("http", True),
}
_URL = re.compile(
    r"(?P<scheme>[a-z0-9+]+)://(?:(?P<user>[^:@/]*):(?P<password>[^@/]*)@)?"
    r"(?P<host>\[[0-9a-fA-F:.]+\]|[^:/@\[\]]+):(?P<port>[0-9]{1,5})/?"
    r"(?:\?(?P<query>[^?#]*))?"
)
_SCHEME_NAMES = "socks5, socks5h, http, socks5s, https, socks5+gssapi or socks5s+gssapi"
# A password file's lines are short; a longer one is no credential.
MAX_PASSWORD_LINE = 1024
_PASSWORD_LINE = re.compile(
    r"[ \t]*(?P<host>\[[0-9a-fA-F:.]+\]|[^:\[\]\s]+):(?P<port>[0-9]{1,5})"
    r"[ \t]+(?P<user>[^:]*):(?P<password>.*)",
    re.DOTALL,
)


class RouteError(ValueError):
    """A hop, an egress address or a password file that cannot be used (C{str}: why)."""

    def __init__(self, why: str, key: str | None = None) -> None:
        super().__init__(why)
        self.key = key  # the rule's key at fault, when known


@dataclass(frozen=True, slots=True)
class Hop:
    """
    One upstream proxy: C{scheme} (C{socks5} or C{http}), C{host} (an IP
    address in its compressed text, or a canonical host name) and C{port},
    and credentials if it wants them (never shown: see L{label}).  With
    C{tls}, it is reached over TLS, its certificate checked for C{host}
    against C{ca} (PEM certificates of the rule's C{ca_file}) or, without
    it, the system's CAs.  With C{gssapi} (the name of its service,
    C{rcmd@host}), it is a Kerberised SOCKS5 proxy, asked for C{protection}.
    """

    scheme: str
    host: str
    port: int
    username: bytes | None = field(default=None, compare=False)
    password: bytes | None = field(default=None, repr=False, compare=False)
    tls: bool = False
    ca: bytes | None = field(default=None, repr=False, compare=False)
    gssapi: str | None = None
    protection: Protection | None = None

    @property
    def label(self) -> str:
        """How logs and metrics name the hop: C{socks5://host:port}, no credentials."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.url_scheme}://{host}:{self.port}"

    @property
    def url_scheme(self) -> str:
        """
        The scheme as a URL spells it: C{socks5s} and C{https} over TLS,
        C{+gssapi} for a Kerberised proxy.
        """
        scheme = self.scheme
        if self.tls:
            scheme = "socks5s" if self.scheme == "socks5" else "https"
        return scheme + gsshops.SUFFIX if self.gssapi is not None else scheme

    @property
    def credentials(self) -> tuple[bytes, bytes] | None:
        if self.username is None or self.password is None:
            return None
        return self.username, self.password

    def __repr__(self) -> str:
        user = "" if self.username is None else f" user={escape(self.username)} password=<hidden>"
        if self.gssapi is not None and self.protection is not None:
            user = f" gssapi={self.gssapi} protection={LEVEL_NAMES[self.protection]}"
        return f"<Hop {self.label}{user}>"


Chain = tuple[Hop, ...]


def chain_label(chain: Chain) -> str:
    """How logs name a chain: its hops' labels joined by C{>}."""
    return ">".join(hop.label for hop in chain) if chain else "direct"


@dataclass(frozen=True, slots=True)
class Route:
    """
    How a rule's requests leave: through one of C{chains} (alternatives, in
    the order they are tried; empty: directly), from an address of
    C{egress} (direct connections only; empty: C{--outgoing-address}).
    """

    chains: tuple[Chain, ...] = ()
    egress: tuple[IPAddress, ...] = ()

    @property
    def upstream(self) -> bool:
        """Whether requests go through upstream proxies (not directly)."""
        return bool(self.chains)

    def describe(self) -> str:
        """For the start-up log: the alternatives, or the egress pool."""
        if self.chains:
            return "via " + " | ".join(chain_label(c) for c in self.chains)
        return "egress " + ", ".join(str(ip) for ip in self.egress)


def parse_hop(url: str, passwords: Mapping[tuple[str, int], tuple[bytes, bytes]]) -> Hop:
    """
    A hop from its URL, C{scheme://[user:password@]host:port}
    (user and password percent-encoded where they need it).  Without
    credentials in the URL, C{passwords} (a password file's, by host and
    port) may give them.  A GSSAPI hop (C{socks5+gssapi://host:port}) has
    none, and may have a query: C{?service=NAME&protection=LEVEL}
    (L{gsshops.parse_query}).  Raises L{RouteError}; its message never
    holds the password.
    """
    match = _URL.fullmatch(url.strip())
    if match is None:
        raise RouteError(
            f"{without_password(url)!r} is not scheme://[user:password@]host:port ({_SCHEME_NAMES})"
        )
    base, plus, extension = match["scheme"].lower().partition("+")
    kind = SCHEMES.get(base)
    if kind is None or (plus and (plus + extension != gsshops.SUFFIX or kind[0] != "socks5")):
        raise RouteError(f"{match['scheme']!r}: the scheme must be {_SCHEME_NAMES}")
    scheme, tls = kind
    port = int(match["port"])
    if not 0 < port <= 65535:
        raise RouteError(f"port {port} is outside 1-65535")
    host = _host(match["host"])
    if plus:
        return _gssapi_hop(match, host, port, tls)
    if match["query"] is not None:
        raise RouteError(
            "a query (?...) is only for GSSAPI hops (socks5+gssapi://, socks5s+gssapi://)"
        )
    user: bytes | None = None
    password: bytes | None = None
    if match["user"] is not None:
        user = unquote(match["user"]).encode("utf-8")
        password = unquote(match["password"]).encode("utf-8")
    elif (host, port) in passwords:
        user, password = passwords[(host, port)]
    if user is not None and password is not None:
        if not user or len(user) > 255 or len(password) > 255:
            raise RouteError("a username must have 1-255 bytes, a password at most 255")
        if scheme == "http" and b":" in user:
            raise RouteError("an HTTP proxy's username cannot hold ':' (Basic authentication)")
    return Hop(scheme, host, port, user, password, tls)


def _gssapi_hop(match: re.Match[str], host: str, port: int, tls: bool) -> Hop:
    """
    A Kerberised SOCKS5 hop: no credentials of its own (the process's
    Kerberos ones; a password file's entry for it does not apply), the
    service and level its query asks for.
    """
    if match["user"] is not None:
        raise RouteError(
            "a GSSAPI hop takes no user:password: it authenticates with the server's"
            " Kerberos credentials (KRB5CCNAME, or the client keytab KRB5_CLIENT_KTNAME)"
        )
    try:
        service, level = gsshops.parse_query(match["query"], host)
    except ValueError as e:
        raise RouteError(str(e)) from None
    return Hop("socks5", host, port, tls=tls, gssapi=service, protection=level)


def _host(text: str) -> str:
    raw = text[1:-1] if text.startswith("[") else text
    try:
        host = canonical(raw.encode("utf-8"))
    except InvalidName as e:
        raise RouteError(e.why) from None
    if text.startswith("[") and not is_address(host):
        raise RouteError(f"{escape(text)} is no IPv6 address")
    return host


def read_password_file(path: str) -> dict[tuple[str, int], tuple[bytes, bytes]]:
    """
    Credentials of upstream proxies from C{path}: one C{host:port
    user:password} a line (an IPv6 host in brackets; the password is the
    rest of the line after the first C{:}, spaces included); blank lines and
    lines starting with C{#} are skipped.  Raises L{RouteError} naming the
    file and the line (never its content).
    """
    try:
        with open(path, encoding="utf-8", newline="") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise RouteError(f"password_file {path}: {getattr(e, 'strerror', None) or e}") from None
    found: dict[tuple[str, int], tuple[bytes, bytes]] = {}
    # Lines end at "\n" only (not at the other line breaks str.splitlines
    # knows, which a password may hold), and the password keeps its spaces,
    # trailing ones included.
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where = f"password_file {path}, line {number}"
        match = _PASSWORD_LINE.fullmatch(line)
        if len(line) > MAX_PASSWORD_LINE or not match:
            raise RouteError(f"{where}: not host:port user:password")
        try:
            host = _host(match["host"])
        except RouteError as e:
            raise RouteError(f"{where}: {e}") from None
        credentials = (match["user"].encode("utf-8"), match["password"].encode("utf-8"))
        found[(host, int(match["port"]))] = credentials
    return found


def parse_egress(text: str) -> IPAddress:
    """An egress address (an IP address, no network); L{RouteError} if it is none."""
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise RouteError(f"{text!r} is not an IP address") from None


def egress_for(pool: Sequence[IPAddress], key: str) -> dict[int, str]:
    """
    The outgoing address per IP version that C{key} (a user name, or the
    client's address when there is none) gets from C{pool}: the same key
    always gets the same address of each version, whatever process asks
    (CRC-32 of the key, not Python's salted C{hash}), so a site sees one
    user at one address.
    """
    chosen: dict[int, str] = {}
    digest = zlib.crc32(key.encode("utf-8", "surrogateescape"))
    for version in (4, 6):
        members = [ip for ip in pool if ip.version == version]
        if members:
            chosen[version] = str(members[digest % len(members)])
    return chosen


ROUTE_KEYS = frozenset({"via", "upstreams", "egress", "password_file", "ca_file"})


def route_of(raw: Mapping[str, object], check_local: bool = True) -> Route | None:
    """
    The route of a C{[[rule]]} table C{raw} (C{None}: it has none):
    C{via = [URL, ...]} (one chain), or C{upstreams = [[URL, ...], ...]}
    (alternatives, each a chain or one URL), C{password_file}, C{ca_file}
    (the CAs of its C{socks5s}/C{https} hops), and C{egress = [IP, ...]}.
    With C{check_local}, each egress address must be one this machine can
    bind (a bind test).  Raises L{RouteError} naming the key.
    """
    if not ROUTE_KEYS & set(raw):
        return None
    if "via" in raw and "upstreams" in raw:
        raise RouteError("give via (one chain) or upstreams (alternatives), not both", "upstreams")
    passwords: dict[tuple[str, int], tuple[bytes, bytes]] = {}
    if "password_file" in raw:
        path = raw["password_file"]
        if not isinstance(path, str) or not path:
            raise RouteError("must be the path of a file", "password_file")
        try:
            passwords = read_password_file(path)
        except RouteError as e:
            raise RouteError(str(e), "password_file") from None
    chains: list[Chain] = []
    if "via" in raw:
        chains.append(_chain(raw["via"], passwords, "via"))
    if "upstreams" in raw:
        alternatives = raw["upstreams"]
        if not isinstance(alternatives, list) or not alternatives:
            raise RouteError("must be a list of chains: [[URL, ...], [URL, ...]]", "upstreams")
        chains.extend(_chain(item, passwords, "upstreams") for item in alternatives)
    hops = [hop for chain in chains for hop in chain]
    try:
        if any(hop.tls for hop in hops):
            tlshops.check_support()
        if any(hop.gssapi is not None for hop in hops):
            gsshops.check_support()
    except ValueError as e:
        raise RouteError(str(e), "upstreams" if "upstreams" in raw else "via") from None
    if "ca_file" in raw:
        path = raw["ca_file"]
        if not isinstance(path, str) or not path:
            raise RouteError("must be the path of a file", "ca_file")
        if not any(hop.tls for chain in chains for hop in chain):
            raise RouteError(
                "ca_file is for socks5s:// and https:// hops; there is none", "ca_file"
            )
        try:
            ca = tlshops.read_ca_file(path)
        except ValueError as e:
            raise RouteError(f"ca_file {e}", "ca_file") from None
        chains = [
            tuple(replace(hop, ca=ca) if hop.tls else hop for hop in chain) for chain in chains
        ]
    egress: list[IPAddress] = []
    if "egress" in raw:
        if chains:
            raise RouteError(
                "egress is for direct connections; a rule with via or upstreams has none", "egress"
            )
        items = raw["egress"]
        if isinstance(items, str):
            items = [items]
        if not isinstance(items, list) or not items or not all(isinstance(i, str) for i in items):
            raise RouteError("must be a non-empty list of IP addresses", "egress")
        for text in items:
            try:
                ip = parse_egress(text)
            except RouteError as e:
                raise RouteError(str(e), "egress") from None
            if check_local:
                _check_bind(ip)
            if ip not in egress:
                egress.append(ip)
    if not chains and not egress:
        raise RouteError("password_file needs via or upstreams", "password_file")
    return Route(tuple(chains), tuple(egress))


def _chain(
    value: object, passwords: Mapping[tuple[str, int], tuple[bytes, bytes]], key: str
) -> Chain:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise RouteError("a chain is a non-empty list of proxy URLs", key)
    try:
        return tuple(parse_hop(url, passwords) for url in value)
    except RouteError as e:
        raise RouteError(str(e), key) from None


def _check_bind(ip: IPAddress) -> None:
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((str(ip), 0))
    except OSError as e:
        raise RouteError(
            f"{ip}: cannot bind to it: {e.strerror} (it must be an address of this machine)",
            "egress",
        ) from None
