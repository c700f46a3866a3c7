"""
Escaping for log lines: the one function every value from the network passes
through before it is written to a log.

A log line must stay one line, show no raw control bytes to a terminal, and
lose nothing: a reader (or fail2ban) must see exactly which bytes a client
sent.  So:

- printable ASCII stays as it is, except the backslash, which is doubled (so
  an escape in the output always means an escape, never a client's text);
- every other byte of a C{bytes} value becomes C{\\xNN};
- in a C{str} value, a control character below 0x80 becomes C{\\xNN}, and
  every other character that is not ASCII C{\\uNNNN} or C{\\UNNNNNNNN};
  a surrogate left by a C{surrogateescape} decode becomes the C{\\xNN} of
  the byte it stands for (so an undecodable byte and a character never look
  alike).

The result is pure printable ASCII, and the escaping is reversible.
"""

from __future__ import annotations

import functools
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from twisted.python.failure import Failure

__all__ = ["escape", "field", "printable", "why", "without_password"]


def _escape_char(code: int) -> str:
    if 0x20 <= code < 0x7F:
        return "\\\\" if code == 0x5C else chr(code)
    if 0xDC80 <= code <= 0xDCFF:
        # A byte that surrogateescape kept from undecodable input.
        return f"\\x{code - 0xDC00:02x}"
    if code < 0x80:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


_BYTE_TABLE = tuple(_escape_char(b) if b < 0x80 else f"\\x{b:02x}" for b in range(256))


@functools.lru_cache(maxsize=1024)
def _escape_text(value: str) -> str:
    if value.isascii() and value.isprintable() and "\\" not in value:
        return value
    return "".join(_escape_char(ord(c)) for c in value)


def escape(value: str | bytes | None) -> str:
    """
    C{value} as printable ASCII for a log line (see the module docstring);
    C{None} becomes C{-}, as the log lines show a missing field.
    """
    if value is None:
        return "-"
    if isinstance(value, bytes):
        return "".join([_BYTE_TABLE[b] for b in value])
    return _escape_text(value)


@functools.lru_cache(maxsize=1024)
def printable(text: str) -> str:
    """
    Text of our own that quotes escaped values (a session's outcome: "connect
    failed: ..."), made printable ASCII again in case some part was not
    escaped: like L{escape}, but a backslash stays single, so what was
    escaped already is not escaped twice.
    """
    if text.isascii() and text.isprintable():
        return text
    return "".join(c if c == "\\" else _escape_char(ord(c)) for c in text)


def field(value: str | bytes | None) -> str:
    """
    L{escape}, with spaces too (as C{\\x20}): for a value that stands
    between other fields of a line (C{user=...}), so that it cannot add a
    field of its own (a username C{x user=admin}).
    """
    return escape(value).replace(" ", "\\x20")


def why(failure: Failure) -> str:
    """
    What went wrong, for a log line: printable (an error's message may quote
    a peer), but not escaped twice: our errors escape what they quote (a
    proxy's status line), so the log shows C{\\x1b}, not C{\\\\x1b}.
    """
    return printable(failure.getErrorMessage() or type(failure.value).__name__)


_PORT_TAIL = re.compile(r"[0-9]{0,5}(?:/.*)?", re.DOTALL)


def without_password(url: str) -> str:
    """
    C{url} (C{scheme://[user:password@]host:port}, as an operator wrote it,
    maybe wrongly) with its password shown as C{<hidden>}, for an error
    message that quotes it.  A password may hold anything (C{/}, C{@},
    C{:}), so all before the last C{@} is the user part; without an C{@},
    text after the host's colon that is no port may be a password whose
    host was forgotten (C{socks5://alice:s3cret}), and is hidden too.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    userinfo, at, hostpart = rest.rpartition("@")
    if at:
        user, colon, _ = userinfo.partition(":")
        shown = f"{user}:<hidden>" if colon else "<hidden>"
        return f"{scheme}://{shown}@{hostpart}"
    if rest.startswith("["):
        return url  # an IPv6 host: its colons are its own
    host, colon, tail = rest.partition(":")
    if colon and not _PORT_TAIL.fullmatch(tail):
        return f"{scheme}://{host}:<hidden>"
    return url
