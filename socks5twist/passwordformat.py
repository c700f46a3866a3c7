"""
The password file's format, sans I/O but for L{read}: accounts (L{Accounts})
parsed from the file's bytes (L{parse}), each password plain or hashed
(L{Secret}, L{Scheme}), and the check of a password against one (L{verify}).

What a caller may rely on: L{parse} raises L{PasswordFileError} (naming the
file and the line, never a password) for anything it does not understand.
The format: one account a line, C{user:password}; the password is the rest
of the line after the first C{:}; only the line ending (C{\\n} or
C{\\r\\n}) is removed; blank lines and lines starting with C{#} are
ignored; a user may appear once.  A password is plain text, or a bcrypt
(C{$2a$}, C{$2b$}, C{$2y$}) or SHA-crypt (C{$5$}, C{$6$}) hash; a value that
looks like the hash of another scheme is an error, never a plain password.

L{read} and L{verify} are pure functions of their arguments, so the hash
threads of L{socks5twist.passwords} may run them.
"""

from __future__ import annotations

import enum
import hmac
import os
import re
from collections import Counter
from dataclasses import dataclass, field

import bcrypt
from passlib.hash import sha256_crypt, sha512_crypt

from .logsafe import escape

__all__ = [
    "BCRYPT_MAX",
    "MAX_FIELD",
    "Accounts",
    "PasswordFileError",
    "Scheme",
    "Secret",
    "Stat",
    "parse",
    "read",
    "verify",
]

# RFC 1929 carries each field in at most 255 bytes.
MAX_FIELD = 255
# bcrypt looks at the first 72 bytes only; htpasswd and libxcrypt cut there
# silently, the bcrypt package refuses longer input, so we cut as they do.
BCRYPT_MAX = 72

_BCRYPT = re.compile(rb"\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}\Z")
# Anything shaped like a modular crypt hash or an LDAP-style {SCHEME} prefix.
_HASH_LIKE = re.compile(rb"\$[A-Za-z0-9_-]{1,16}\$|\{[A-Za-z0-9_-]{1,16}\}")

_UNSUPPORTED_HINT = "use bcrypt (htpasswd -B) or SHA-crypt (htpasswd -5, mkpasswd -m sha512crypt)"
_KNOWN_UNSUPPORTED = {
    b"$apr1$": "an Apache MD5 hash (htpasswd's default)",
    b"$1$": "an MD5-crypt hash",
    b"$y$": "a yescrypt hash",
    b"$gy$": "a GOST yescrypt hash",
    b"$7$": "an scrypt hash",
    b"$2x$": "a bcrypt hash of the buggy $2x$ variant",
    b"{SHA}": "an unsalted SHA-1 hash (htpasswd -s)",
    b"{SSHA}": "a salted SHA-1 hash",
}


class PasswordFileError(Exception):
    """
    The password file cannot be used.  The message names the file and, when
    it is about one line, its number; it never holds a password.
    """


class Scheme(enum.Enum):
    """How a password is stored; the value is the prefix that marks it."""

    PLAIN = ""
    BCRYPT = "$2b$"
    SHA256_CRYPT = "$5$"
    SHA512_CRYPT = "$6$"


@dataclass(frozen=True)
class Secret:
    """A stored password (plain or hashed); its repr never shows it."""

    scheme: Scheme
    value: bytes = field(repr=False)

    @property
    def costly(self) -> bool:
        """Checked in the hash threads (a hash), not on the reactor (plain)."""
        return self.scheme is not Scheme.PLAIN

    def cost_class(self) -> tuple[Scheme, bytes]:
        """Secrets of one class take as long to check (scheme and its cost)."""
        if self.scheme is Scheme.BCRYPT:
            return self.scheme, self.value[4:6]
        if self.scheme is Scheme.PLAIN:
            return self.scheme, b""
        rounds = self.value.split(b"$")[2]
        return self.scheme, rounds if rounds.startswith(b"rounds=") else b""


@dataclass(frozen=True)
class Accounts:
    """
    The accounts of one reading of the file.

    @ivar dummy: a hash to check an unknown user's password against (the
        first of the most common cost class in the file), so that it costs
        what a known user's does; C{None} when the file holds no hash.
    @ivar cost_classes: how many different hash schemes and costs the file
        holds: past one, a user whose hash costs more or less than the
        dummy's can be told apart by timing (a warning says so at load).
    """

    users: dict[bytes, Secret] = field(repr=False)
    dummy: Secret | None = field(default=None, repr=False)
    cost_classes: int = 0

    def __repr__(self) -> str:
        return f"<Accounts: {len(self.users)} user{'' if len(self.users) == 1 else 's'}>"


_CRYPT_HANDLERS = {
    b"$5$": (Scheme.SHA256_CRYPT, sha256_crypt),
    b"$6$": (Scheme.SHA512_CRYPT, sha512_crypt),
}


def _secret(value: bytes, path: str, number: int) -> Secret:
    """Classify one stored password; raise for a hash we do not take."""
    if not value.startswith((b"$", b"{")):  # the common case of a plain password, first
        if len(value) > MAX_FIELD:
            raise _error(
                path, number, f"plain password longer than {MAX_FIELD} bytes (RFC 1929's limit)"
            )
        return Secret(Scheme.PLAIN, value)
    if value.startswith((b"$2a$", b"$2b$", b"$2y$")):
        if not _BCRYPT.match(value):
            raise _error(path, number, "malformed bcrypt hash")
        return Secret(Scheme.BCRYPT, value)
    if value[:3] in _CRYPT_HANDLERS:
        scheme, handler = _CRYPT_HANDLERS[value[:3]]
        try:
            # Without a checksum it is a salt ("config string"), no hash.
            complete = bool(handler.from_string(value.decode("ascii")).checksum)
        except ValueError:  # UnicodeDecodeError included
            complete = False
        if not complete:
            raise _error(path, number, f"malformed {scheme.name} hash")
        return Secret(scheme, value)
    hash_like = _HASH_LIKE.match(value)
    if hash_like:
        prefix = hash_like.group()
        what = _KNOWN_UNSUPPORTED.get(prefix, f"a hash of an unsupported scheme ({escape(prefix)})")
        raise _error(
            path,
            number,
            f"the password is {what}; {_UNSUPPORTED_HINT}"
            " (a plain password may not start like a hash)",
        )
    return Secret(Scheme.PLAIN, value)  # "$" or "{" then nothing hash-like


def _error(path: str, number: int, message: str) -> PasswordFileError:
    return PasswordFileError(f"{path}, line {number}: {message}")


def parse(data: bytes, path: str) -> Accounts:
    """
    The accounts in C{data}, the content of the file at C{path} (named in
    errors only).  A duplicate user is an error: which line was meant cannot
    be guessed, and an old line left below a new one must not keep working.
    """
    users: dict[bytes, Secret] = {}
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # the file's last line ending
    for number, line in enumerate(lines, 1):
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line or line.startswith(b"#"):
            continue
        user, colon, value = line.partition(b":")
        if not colon:
            raise _error(path, number, "expected user:password (no ':')")
        if not user:
            raise _error(path, number, "empty user name")
        if not value:
            raise _error(path, number, f"empty password for user {escape(user)}")
        if len(user) > MAX_FIELD:
            raise _error(
                path, number, f"user name longer than {MAX_FIELD} bytes (RFC 1929's limit)"
            )
        if user in users:
            raise _error(
                path, number, f"user {escape(user)} is already defined {_first(lines, user)}"
            )
        users[user] = _secret(value, path, number)
    classes = Counter(s.cost_class() for s in users.values() if s.costly)
    dummy = None
    if classes:
        common = classes.most_common(1)[0][0]
        dummy = next(s for s in users.values() if s.cost_class() == common)
    return Accounts(users, dummy, len(classes))


def _first(lines: list[bytes], user: bytes) -> str:
    """Where C{user} first appears (looked up only for the error)."""
    for number, line in enumerate(lines, 1):
        if line.startswith(user + b":"):
            return f"on line {number}"
    return "above"


@dataclass(frozen=True)
class Stat:
    """What tells us the file changed: a rename, a write, a truncation."""

    device: int
    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> Stat:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def read(path: str) -> tuple[Accounts, Stat]:
    """
    Read and parse the file; the L{Stat} is the one of the file read (taken
    from the open descriptor, so a replacement made meanwhile is seen later).
    """
    try:
        with open(path, "rb") as f:
            st = Stat.of(os.fstat(f.fileno()))
            data = f.read()
    except OSError as e:
        raise PasswordFileError(f"{path}: {e.strerror}") from None
    return parse(data, path), st


def verify(secret: Secret, password: bytes) -> bool:
    """
    Whether C{password} matches C{secret}.  Costly for hashes (call it in a
    thread); a hash that the library refuses counts as a mismatch.
    """
    try:
        if secret.scheme is Scheme.PLAIN:
            return hmac.compare_digest(secret.value, password)
        if secret.scheme is Scheme.BCRYPT:
            return bcrypt.checkpw(password[:BCRYPT_MAX], secret.value)
        handler = sha256_crypt if secret.scheme is Scheme.SHA256_CRYPT else sha512_crypt
        return bool(handler.verify(password, secret.value.decode("ascii")))
    except ValueError:
        return False
