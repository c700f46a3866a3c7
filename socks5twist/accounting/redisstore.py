"""
L{RedisStore}: the accounting store of a fleet (C{--accounting
redis://[:PASSWORD@]HOST:PORT/DB}), so that several socks5twist processes,
on one machine (C{--workers}) or many, count into the same totals and hold
one C{sessions} limit per key.

The client is redis-py, synchronous, used from the store's own thread
(L{socks5twist.accounting.writer}) like the SQLite connection: the reactor
never waits on Redis, and the one thread needs no pool and no lock.  Every
call has a short socket timeout and no retry loop of the client's own, so a
Redis that is away costs that thread at most a timeout per job, and the
accountant (not the client) decides when to try again.

Key layout (the README's):

  - C{socks5twist:usage:PERIOD:KEY}, a hash with fields C{up}, C{down} and
    C{sessions}: what KEY (C{user:alice}, C{ip:10.0.0.7}) used in PERIOD
    (C{2026-12-01}, C{2026-12} or C{total}).  A day's hash expires
    L{DAY_KEPT} seconds after the day ends (UTC), a month's L{MONTH_KEPT}
    after the month ends; C{total} never.
  - C{socks5twist:sessions:N:KEY}, a sorted set of session leases under
    the C{[[limit]]} numbered N: members name a process and a session,
    scores are when each lease expires (Redis' own clock, so that the
    machines' clocks need not agree).  A process renews its leases every
    few seconds; the leases of a process that died expire by themselves.
"""

from __future__ import annotations

import calendar
import math
from collections.abc import Collection, Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

from .store import Cell, StoreError, Usage

__all__ = ["DAY_KEPT", "MONTH_KEPT", "PREFIX", "RedisStore", "parse_redis_url"]

PREFIX = "socks5twist"
DAY_KEPT = 7 * 86400  # a day's counters, after the day ends
MONTH_KEPT = 40 * 86400  # a month's, after it ends: last month's are there all this month
TIMEOUT = 2.0  # seconds, for connecting and for each reply

# A lease for MEMBER in the set KEYS[1] if fewer than ARGV[1] unexpired
# leases are there (the expired ones are dropped first): 1, or 0 (full).
_LEASE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if not redis.call('ZSCORE', KEYS[1], ARGV[3])
   and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
redis.call('PEXPIRE', KEYS[1], math.ceil(tonumber(ARGV[2]) * 1000))
return 1
"""

# Renew (or, after a Redis restart, re-add) the leases ARGV[2..] in KEYS[1]
# for ARGV[1] seconds from now.
_RENEW = """
local t = redis.call('TIME')
local expires = tonumber(t[1]) + tonumber(t[2]) / 1000000 + tonumber(ARGV[1])
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], expires, ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], math.ceil(tonumber(ARGV[1]) * 1000))
return 1
"""


def _bytes(text: str) -> bytes:
    # Names come from clients: any str round-trips, a lone surrogate too.
    return text.encode("utf-8", "surrogatepass")


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogatepass")


def usage_key(key: str, period: str) -> bytes:
    """The hash of C{key}'s counters in C{period}."""
    return _bytes(f"{PREFIX}:usage:{period}:{key}")


def lease_set(limit_index: int, key: str) -> bytes:
    """The sorted set of C{key}'s session leases under C{[[limit]]} number C{limit_index}."""
    return _bytes(f"{PREFIX}:sessions:{limit_index}:{key}")


def expires_at(period: str) -> int | None:
    """When the counters of C{period} expire (a Unix time), or C{None} (C{total})."""
    if period == "total":
        return None
    parts = [int(p) for p in period.split("-")]
    if len(parts) == 3:
        return calendar.timegm((*parts, 0, 0, 0)) + 86400 + DAY_KEPT
    year, month = parts
    year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return calendar.timegm((year, month, 1, 0, 0, 0)) + MONTH_KEPT


def parse_redis_url(text: str) -> RedisStore:
    """
    C{redis://HOST:PORT/DB}, or C{redis://:PASSWORD@HOST:PORT/DB} (or
    C{USER:PASSWORD@}); the port defaults to 6379 and DB to 0.  Raises
    C{ValueError} with one line that never shows the password.
    """
    url = urlsplit(text)
    try:
        port = url.port or 6379
        host = url.hostname
    except ValueError:
        port, host = 0, None
    shown = f"redis://{host}:{port}{url.path}" if host else "redis://..."
    if url.scheme != "redis" or not host or url.query or url.fragment:
        raise ValueError(f"--accounting {shown}: not redis://[:PASSWORD@]HOST[:PORT][/DB]")
    db_text = url.path.lstrip("/") or "0"
    if not db_text.isdigit() or int(db_text) > 65535:
        raise ValueError(f"--accounting {shown}: the database is a number (/0, /1...)")
    try:
        import redis  # noqa: F401
    except ImportError:
        raise ValueError(
            "--accounting redis://...: the redis package is missing"
            " (pip install 'socks5twist[redis]')"
        ) from None
    password = unquote(url.password) if url.password is not None else None
    username = unquote(url.username) if url.username else None
    return RedisStore(host, port, int(db_text), password=password, username=username)


class RedisStore:
    """
    Counters and session leases in one Redis database (see the module
    docstring).  Made by L{parse_redis_url}; connected by L{open}, in the
    store's thread, which alone uses it from then on.
    """

    def __init__(
        self,
        host: str,
        port: int = 6379,
        db: int = 0,
        *,
        password: str | None = None,
        username: str | None = None,
        timeout: float = TIMEOUT,
    ) -> None:
        self.host = host
        self.port = port
        self.db = db
        self._password = password  # never in a log line, nor in description
        self._username = username
        self.timeout = timeout
        self._client: Any = None
        self._lease: Any = None
        self._renew: Any = None

    @property
    def description(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"redis://{host}:{self.port}/{self.db}"

    def open(self) -> None:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        # (single_connection_client: the one connection is made here, at once.)
        try:
            client = redis.Redis(
                host=self.host,
                port=self.port,
                db=self.db,
                password=self._password,
                username=self._username,
                socket_timeout=self.timeout,
                socket_connect_timeout=self.timeout,
                # No retries of the client's own: the accountant retries each
                # second, and a job that waits on backoffs delays every other.
                retry=Retry(NoBackoff(), 0),
                single_connection_client=True,
            )
        except redis.RedisError as e:
            raise StoreError(f"cannot use {self.description}: {e}") from None
        try:
            client.ping()
        except redis.RedisError as e:
            client.close()
            raise StoreError(f"cannot use {self.description}: {e}") from None
        self._client = client
        self._lease = client.register_script(_LEASE)
        self._renew = client.register_script(_RENEW)

    def _redis(self) -> Any:
        if self._client is None:
            raise StoreError(f"{self.description} is not open")
        return self._client

    # -- counters -------------------------------------------------------------------

    def load(self, periods: Collection[str]) -> dict[Cell, Usage]:
        client = self._redis()
        totals: dict[Cell, Usage] = {}
        for period in periods:
            prefix = f"{PREFIX}:usage:{period}:"
            names = list(client.scan_iter(match=_bytes(prefix) + b"*", count=1000))
            pipe = client.pipeline(transaction=False)
            for name in names:
                pipe.hmget(name, "up", "down", "sessions")
            for name, values in zip(names, pipe.execute(), strict=True):
                up, down, sessions = (int(v or 0) for v in values)
                totals[(_text(name)[len(prefix) :], period)] = Usage(up, down, sessions)
        return totals

    def read(self, cells: Collection[Cell]) -> dict[Cell, Usage]:
        """
        The totals of C{cells}, which other processes write too (read each
        second for the keys this one serves, so that a quota holds fleet-wide).
        """
        pipe = self._redis().pipeline(transaction=False)
        for key, period in cells:
            pipe.hmget(usage_key(key, period), "up", "down", "sessions")
        return {
            cell: Usage(*(int(v or 0) for v in values))
            for cell, values in zip(cells, pipe.execute(), strict=True)
        }

    def add(self, batch: Mapping[Cell, Usage]) -> dict[Cell, Usage]:
        client = self._redis()
        # MULTI/EXEC: the whole batch or none of it, each HINCRBY atomic
        # against other processes' (HINCRBY returns the new total).
        pipe = client.pipeline(transaction=True)
        cells = list(batch.items())
        for (key, period), usage in cells:
            name = usage_key(key, period)
            pipe.hincrby(name, "up", usage.up)
            pipe.hincrby(name, "down", usage.down)
            pipe.hincrby(name, "sessions", usage.sessions)
            expires = expires_at(period)
            if expires is not None:
                pipe.expireat(name, expires)
        replies = iter(pipe.execute())
        totals: dict[Cell, Usage] = {}
        for cell, _ in cells:
            totals[cell] = Usage(next(replies), next(replies), next(replies))
            if cell[1] != "total":
                next(replies)  # EXPIREAT's
        return totals

    # -- session leases -------------------------------------------------------------

    def lease(self, name: bytes, member: str, most: int, ttl: float) -> bool:
        """
        Take a lease for C{member} in the set C{name} if fewer than C{most}
        unexpired leases are there; it expires C{ttl} seconds from now
        unless renewed.  Whether it was taken.
        """
        self._redis()
        return bool(self._lease(keys=[name], args=[most, _ttl(ttl), member]))

    def renew(self, leases: Mapping[bytes, Collection[str]], ttl: float) -> None:
        """Renew (or re-add, after a Redis restart) C{leases} for C{ttl} seconds."""
        client = self._redis()
        pipe = client.pipeline(transaction=False)
        for name, members in leases.items():
            self._renew(keys=[name], args=[_ttl(ttl), *members], client=pipe)
        pipe.execute()

    def unlease(self, name: bytes, member: str) -> None:
        """Give back a lease."""
        self._redis().zrem(name, member)

    def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            client.close()


def _ttl(seconds: float) -> str:
    return str(math.ceil(seconds * 1000) / 1000)
