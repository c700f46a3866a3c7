"""
C{--auth file:PATH}: a password file, read when it changes, checked off the
reactor thread.

What a caller may rely on:

- The file's format, its hashes and their check are
  L{socks5twist.passwordformat}'s (L{parse}, L{verify}; re-exported here).
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

import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.cred import error
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from .logs import count
from .passwordformat import (
    Accounts,
    PasswordFileError,
    Scheme,
    Secret,
    Stat,
    parse,
    read,
    verify,
)

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
        return f"<PasswordFile {self.path!r}: {count(len(self.accounts.users), 'user')}>"

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
                "passwords reloaded from {path}: {users}",
                path=self.path,
                n=len(self.accounts.users),
                users=count(len(self.accounts.users), "user"),
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
                    "{checks} waiting: refusing more logins until they are done",
                    n=self._pending,
                    checks=count(self._pending, "password check"),
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
