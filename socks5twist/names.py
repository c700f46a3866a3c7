"""
Destination names: the one definition of a valid name, and its canonical form.

A SOCKS client sends a destination name as up to 255 arbitrary bytes.  Before
a name may reach a rule, the resolver or a log line it is turned, once, into
the form every one of them sees:

1. The bytes must be UTF-8, without control, surrogate, private-use,
   unassigned or line/paragraph separator characters (a NUL would end the
   name for the resolver but not for the rules; a newline would forge a log
   line).
2. The text is mapped as UTS #46 does (what browsers do: case folding, NFKC,
   fullwidth letters and ideographic full stops become ASCII, zero-width and
   other ignored characters vanish), so that every spelling which leads to
   the same host has the same canonical form.  One trailing dot (an absolute
   name) is dropped.
3. An IP literal (C{127.0.0.1}, C{::1}, C{[::1]}) is that address, in its
   compressed text; so is every legacy IPv4 spelling that the system
   resolver would read as an address (C{0}, C{127.1}, C{0x7f.1},
   C{2130706433}): those never go to the resolver, and the rules see the
   address they lead to.
4. Otherwise it is a host name: labels of 1-63 bytes, 253 bytes in all.  An
   ASCII label may hold letters, digits, C{-} and C{_} (real names use
   underscores); a label starting C{xn--} must be a valid A-label; any other
   label must be a valid IDNA 2008 U-label and is written as its A-label.
   The last label may not be numeric (it would be an address, or nothing).

The canonical form is lower-case ASCII.  Anything else raises L{InvalidName},
whose C{why} is safe to log.  Rule patterns go through the same function
(L{canonical_pattern}), so a rule written in Unicode matches the punycode a
client sends and the other way round.

This module does no I/O.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import socket
import unicodedata

import idna

from .logsafe import escape

__all__ = ["MAX_NAME", "InvalidName", "canonical", "canonical_pattern", "is_address"]

MAX_NAME = 253  # bytes, without a trailing dot (RFC 1035 as resolvers count it)
MAX_LABEL = 63

# Categories never part of a host name, whatever the mapping would do.
_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cs", "Co", "Cn", "Zl", "Zp"})
_ASCII_NAME = re.compile(rb"[a-z0-9_.\-]+")
_ASCII_LABEL = re.compile(r"[a-z0-9_\-]+")
_NUMERIC_LABEL = re.compile(r"(0x[0-9a-f]*|[0-9]+)")


class InvalidName(ValueError):
    """A destination name that no rule, resolver or log line may see."""

    def __init__(self, raw: bytes | str, problem: str) -> None:
        self.why = f"invalid name {escape(raw)}: {problem}"
        super().__init__(self.why)


@functools.lru_cache(maxsize=4096)
def canonical(raw: bytes) -> str:
    """
    The canonical form of the name C{raw} (see the module docstring): a host
    name in lower-case ASCII, or the compressed text of the IP address it
    spells.  Raises L{InvalidName}.  Cached: clients ask for the same few
    names again and again.
    """
    if not raw:
        raise InvalidName(raw, "empty")
    if _ASCII_NAME.fullmatch(raw):
        # Lower-case ASCII letters, digits, dots, hyphens and underscores:
        # already mapped.
        text = raw.decode("ascii")
    else:
        try:
            decoded = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidName(raw, "not UTF-8") from None
        text = _mapped(raw, decoded)
    return _checked(raw, text)


def canonical_pattern(pattern: str) -> str:
    """
    A rule's name pattern (C{host.example} or C{*.example}) in canonical
    form; raises L{InvalidName}.  A pattern that is an IP address is refused:
    addresses belong in C{destinations}.
    """
    wildcard = pattern.startswith("*.")
    body = pattern[2:] if wildcard else pattern
    name = canonical(body.encode("utf-8", "surrogatepass"))
    if is_address(name):
        raise InvalidName(pattern, "an IP address (use destinations = [...] for addresses)")
    return f"*.{name}" if wildcard else name


def _mapped(raw: bytes, text: str) -> str:
    for char in text:
        if unicodedata.category(char) in _FORBIDDEN_CATEGORIES:
            raise InvalidName(raw, f"forbidden character U+{ord(char):04X}")
    try:
        return str(idna.uts46_remap(text, std3_rules=False, transitional=False))
    except idna.IDNAError as e:
        raise InvalidName(raw, _problem(e)) from None


def _checked(raw: bytes, text: str) -> str:
    if text.endswith("."):
        text = text[:-1]
    if not text:
        raise InvalidName(raw, "empty")
    address = _ip_literal(raw, text)
    if address is not None:
        return address
    labels = text.split(".")
    out = [_label(raw, label) for label in labels]
    if _NUMERIC_LABEL.fullmatch(out[-1]):
        raise InvalidName(raw, "the last label is numeric but the name is no IP address")
    name = ".".join(out)
    if len(name) > MAX_NAME:
        raise InvalidName(raw, f"longer than {MAX_NAME} bytes")
    return name


def _ip_literal(raw: bytes, text: str) -> str | None:
    """The address C{text} spells, if it spells one (see the module docstring)."""
    if text.startswith("[") or text.endswith("]"):
        inner = text[1:-1] if text.startswith("[") and text.endswith("]") else ""
        if ":" not in inner or "%" in inner:
            raise InvalidName(raw, "brackets hold an IPv6 address (without a zone)")
        try:
            return _compressed(ipaddress.IPv6Address(inner))
        except ValueError:
            raise InvalidName(raw, "brackets hold an IPv6 address") from None
    if ":" in text:
        if "%" in text:
            raise InvalidName(raw, "an address with a zone ID is no destination")
        try:
            return _compressed(ipaddress.IPv6Address(text))
        except ValueError:
            raise InvalidName(raw, "neither an IPv6 address nor a host name") from None
    last = text.rsplit(".", 1)[-1]
    if not _NUMERIC_LABEL.fullmatch(last):
        return None
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        pass
    try:
        # The legacy spellings inet_aton() accepts (and getaddrinfo() with
        # it): 127.1, 0x7f.1, 017700000001, 0.
        return socket.inet_ntoa(socket.inet_aton(text))
    except OSError:
        return None  # refused below as a numeric last label


def _compressed(ip: ipaddress.IPv6Address) -> str:
    mapped = ip.ipv4_mapped
    return str(mapped) if mapped is not None else ip.compressed


def _label(raw: bytes, label: str) -> str:
    if not label:
        raise InvalidName(raw, "empty label")
    if label.isascii():
        if not _ASCII_LABEL.fullmatch(label):
            bad = next(c for c in label if not _ASCII_LABEL.fullmatch(c))
            raise InvalidName(raw, f"character '{escape(bad)}' in a label")
        if label.startswith("xn--"):
            try:
                again = idna.alabel(idna.ulabel(label)).decode("ascii")
            except (idna.IDNAError, UnicodeError):
                raise InvalidName(raw, f"{label} is not a valid A-label") from None
            if again != label:
                raise InvalidName(raw, f"{label} is not a canonical A-label")
    else:
        try:
            label = idna.alabel(label).decode("ascii")
        except (idna.IDNAError, UnicodeError) as e:
            raise InvalidName(raw, _problem(e)) from None
    if len(label) > MAX_LABEL:
        raise InvalidName(raw, f"a label longer than {MAX_LABEL} bytes")
    return label


def _problem(e: Exception) -> str:
    return escape(str(e) or type(e).__name__)


def is_address(name: str) -> bool:
    """
    Whether a canonical form (what L{canonical} returns) is an IP address
    rather than a host name: a host name's last label is never all digits
    and holds no C{:}.
    """
    return ":" in name or name.rpartition(".")[2].isdigit()
