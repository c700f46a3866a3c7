"""
C{--auth file:PATH}: a password file, read when it changes, checked off the
reactor thread.

What a caller may rely on:

- L{parse} turns the file's bytes into L{Accounts} without any I/O, and
  raises L{PasswordFileError} (naming the file and the line, never a
  password) for anything it does not understand.  The format: one account a
  line, C{user:password}; the password is the rest of the line after the
  first C{:}; only the line ending (C{\\n} or C{\\r\\n}) is removed; blank
  lines and lines starting with C{#} are ignored; a user may appear once.
- A password is plain text, or a bcrypt (C{$2a$}, C{$2b$}, C{$2y$}) or
  SHA-crypt (C{$5$}, C{$6$}) hash.  A value that looks like the hash of
  another scheme is an error, never a plain password.
- L{PasswordFile} is the C{ICredentialsChecker}.  It reads the file at
  start-up (L{PasswordFile.load}, which raises), on L{PasswordFile.reload}
  (SIGHUP), and when a login finds, with at most one C{os.stat} a second,
  that the file changed.  A reload that fails logs one line and keeps the
  accounts in force.  Hashes are checked in L{HashThreads}, a small pool of
  its own, so neither the reactor nor its thread pool (name resolution)
  waits for them; an unknown user is checked against a dummy hash so that
  it costs what a wrong password costs.

Threads: the pool's threads only run L{verify} and L{read}, pure functions
of their arguments; every attribute of L{PasswordFile} is read and written
on the reactor thread only (results come back through Deferreds, which
L{deferToThreadPool} fires there).
"""

from __future__ import annotations

import enum
import hmac
import os
import re
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import bcrypt
from passlib.hash import sha256_crypt, sha512_crypt
from twisted.cred import error
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from .logsafe import escape

__all__ = [
    "Accounts",
    "HashThreads",
    "PasswordFile",
    "PasswordFileError",
    "Scheme",
    "Secret",
    "parse",
    "read",
    "verify",
]

log = Logger()
T = TypeVar("T")

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
        return f"<Accounts: {len(self.users)} users>"


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


class HashThreads:
    """
    A few threads of our own for hash checks, started on first use and
    stopped when the reactor shuts down.  Kept apart from the reactor's pool
    so a flood of logins cannot delay name resolution; the pool's queue is
    bounded by L{PasswordFile}, not here.
    """

    def __init__(self, reactor: Any, size: int = 2) -> None:
        self.reactor = reactor
        self.size = size
        self._pool: ThreadPool | None = None

    def run(self, f: Callable[..., T], *args: Any) -> defer.Deferred[T]:
        """Call C{f(*args)} in a pool thread; the result fires on the reactor thread."""
        if self._pool is None:
            self._pool = ThreadPool(0, self.size, name="socks5twist-passwords")
            self._pool.start()
            self.reactor.addSystemEventTrigger("during", "shutdown", self.stop)
        return threads.deferToThreadPool(self.reactor, self._pool, f, *args)

    def stop(self) -> None:
        """Stop the threads (a check under way is finished first)."""
        if self._pool is not None:
            pool, self._pool = self._pool, None
            pool.stop()


Runner = Callable[..., "defer.Deferred[Any]"]


@implementer(ICredentialsChecker)
class PasswordFile:
    """
    The checker for C{--auth file:PATH}: credentials are the C{bytes} the
    client sent; the avatar ID is the user name, as C{bytes}.

    @ivar max_pending: hash checks that may wait for a thread; a login
        beyond that fails at once (its client would time out before its
        turn came anyway), and one line says so.
    """

    credentialInterfaces = (IUsernamePassword,)
    STAT_INTERVAL = 1.0
    max_pending = 256

    def __init__(
        self,
        path: str,
        reactor: Any = None,
        run_in_thread: Runner | None = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self.path = path
        self.reactor = reactor
        self._run: Runner = run_in_thread or HashThreads(reactor).run
        self.accounts = Accounts({})
        self._stat: Stat | None = None
        self._checked_at = float("-inf")
        self._reloading: defer.Deferred[bool] | None = None
        self._pending = 0
        self._shedding = False
        self._last_error: str | None = None

    def __repr__(self) -> str:
        return f"<PasswordFile {self.path!r}: {len(self.accounts.users)} users>"

    # -- reading -----------------------------------------------------------------

    def load(self) -> None:
        """Read the file now, on this thread; raise L{PasswordFileError} (start-up)."""
        self.accounts, self._stat = read(self.path)
        self._checked_at = self.reactor.seconds()
        self._warn_of_mixed_costs()

    def _warn_of_mixed_costs(self) -> None:
        if self.accounts.cost_classes > 1:
            log.warn(
                "{path}: hashes of {n} different schemes or costs; a user whose hash costs"
                " more or less than most can be told apart by timing (hash them alike)",
                path=self.path,
                n=self.accounts.cost_classes,
            )

    def reload(self) -> defer.Deferred[bool]:
        """
        Reread the file in a thread (SIGHUP).  Fires with C{True} once the new
        accounts are in force; on error logs one line, keeps the old accounts
        and fires with C{False}.
        """
        if self._reloading is not None:
            reloading = self._reloading
        else:
            reloading = self._reloading = self._run(read, self.path)
            reloading.addBoth(self._reloaded)
        return _follow(reloading)

    def _reloaded(self, result: Any) -> bool:
        self._reloading = None
        self._checked_at = self.reactor.seconds()
        if isinstance(result, tuple):
            self.accounts, self._stat = result
            self._last_error = None
            self._warn_of_mixed_costs()
            log.info(
                "passwords reloaded from {path}: {n} users",
                path=self.path,
                n=len(self.accounts.users),
            )
            return True
        reason = result.value if hasattr(result, "value") else result
        message = str(reason)
        if not isinstance(reason, PasswordFileError):
            log.failure("passwords NOT reloaded from {path}", result, path=self.path)
        elif message != self._last_error:
            log.error(
                "passwords NOT reloaded, the previous users stay in force: {error}", error=message
            )
        self._last_error = message
        return False

    def _check_for_change(self) -> None:
        """At most once a second: stat the file and reload it if it changed."""
        now = self.reactor.seconds()
        if self._reloading is not None or now - self._checked_at < self.STAT_INTERVAL:
            return
        self._checked_at = now
        try:
            st: Stat | None = Stat.of(os.stat(self.path))
        except OSError:
            st = None
        if st == self._stat:
            return
        self._stat = st  # so a file that stays missing or broken is read once
        self.reload()

    # -- checking ----------------------------------------------------------------

    def requestAvatarId(self, credentials: Any) -> defer.Deferred[Any]:
        username = _bytes(credentials.username)
        password = _bytes(credentials.password)
        self._check_for_change()
        if self._reloading is not None:
            waiting = _follow(self._reloading)
            return waiting.addCallback(lambda _: self._check(username, password))
        return self._check(username, password)

    def _check(self, username: bytes, password: bytes) -> defer.Deferred[bytes]:
        accounts = self.accounts
        secret = accounts.users.get(username)

        def decided(matches: bool) -> bytes:
            if matches:
                return username
            raise error.UnauthorizedLogin()

        if secret is None:
            if accounts.dummy is None:
                return defer.fail(error.UnauthorizedLogin())
            return self._verify(accounts.dummy, password).addCallback(lambda _: _refuse())
        if not secret.costly:
            matches = verify(secret, password)
            if accounts.dummy is None:
                return defer.succeed(username) if matches else defer.fail(error.UnauthorizedLogin())
            # Where the file holds hashes, a plain user costs the same dummy
            # check as an unknown one: timing tells neither apart.
            return self._verify(accounts.dummy, password).addCallback(lambda _: decided(matches))
        return self._verify(secret, password).addCallback(decided)

    def _verify(self, secret: Secret, password: bytes) -> defer.Deferred[bool]:
        """
        Check C{password} against C{secret} in a hash thread.  Cancelling the
        result (the client left) makes a check that has not started yet cost
        nothing, so checks for clients that are gone never hold up others.
        """
        if self._pending >= self.max_pending:
            if not self._shedding:
                self._shedding = True
                log.warn(
                    "{n} password checks waiting: refusing more logins until they are done",
                    n=self._pending,
                )
            return defer.fail(error.UnauthorizedLogin())
        self._pending += 1
        # Set by the reactor thread, read by the hash thread: an Event, not a
        # plain flag.
        cancelled = threading.Event()

        def done(result: T) -> T:
            self._pending -= 1
            if self._shedding and self._pending == 0:
                self._shedding = False
                log.info("password checks caught up; taking logins again")
            return result

        result: defer.Deferred[bool] = defer.Deferred(lambda _: cancelled.set())

        def deliver(outcome: Any) -> None:
            if not result.called:
                if isinstance(outcome, Failure):
                    result.errback(outcome)
                else:
                    result.callback(outcome)

        self._run(_verify_unless, secret, password, cancelled).addBoth(done).addBoth(deliver)
        return result


def _verify_unless(secret: Secret, password: bytes, cancelled: threading.Event) -> bool:
    """L{verify}, unless the check was cancelled before a thread took it."""
    return False if cancelled.is_set() else verify(secret, password)


def _refuse() -> bytes:
    raise error.UnauthorizedLogin()


def _follow(d: defer.Deferred[T]) -> defer.Deferred[T]:
    """A Deferred that fires with C{d}'s result, leaving C{d}'s chain as it is."""
    follower: defer.Deferred[T] = defer.Deferred()

    def passOn(result: Any) -> Any:
        follower.callback(result)
        return result

    d.addBoth(passOn)
    return follower


def _bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8")
