"""
The Redis store against a real C{redis-server} (started here, see
L{socks5twist.test.redisserver}): counters added atomically by several
clients at once, read back, expiring after their period; session leases
that count, expire, and come back after a restart; a password never shown.
"""

from __future__ import annotations

import calendar
import os
import threading
import time

from redis.exceptions import RedisError
from twisted.trial.unittest import SkipTest, TestCase

from socks5twist.accounting import StoreError, Usage
from socks5twist.accounting.redisstore import (
    DAY_KEPT,
    MONTH_KEPT,
    RedisStore,
    expires_at,
    lease_set,
    parse_redis_url,
)
from socks5twist.accounting.store import periods_of
from socks5twist.limits import Quota
from socks5twist.test.redisserver import RedisServer, Unavailable


def started(*extra: str) -> RedisServer:
    try:
        return RedisServer(*extra)
    except Unavailable as e:
        if os.environ.get("CI"):
            raise AssertionError(f"{e}; tests may not be skipped in CI") from None
        raise SkipTest(str(e)) from None


class RedisStoreTests(TestCase):
    def setUp(self) -> None:
        self.server = started()
        self.addCleanup(self.server.close)
        self.store = self.open(self.server.url)

    def open(self, url: str) -> RedisStore:
        store = parse_redis_url(url)
        store.open()
        self.addCleanup(store.close)
        return store

    def test_batches_from_several_processes_add_up_exactly(self) -> None:
        stores = [self.open(self.server.url) for _ in range(4)]
        cells = [("user:alice", "2026-12-01"), ("user:alice", "total")]

        def add(store: RedisStore) -> None:
            for _ in range(50):
                store.add({cell: Usage(3, 5, 1) for cell in cells})

        threads = [threading.Thread(target=add, args=(s,)) for s in stores]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        totals = self.store.add({cells[0]: Usage(1, 0, 0)})
        self.assertEqual(totals, {cells[0]: Usage(601, 1000, 200)})
        self.assertEqual(
            self.store.load(["2026-12-01", "total"]),
            {cells[0]: Usage(601, 1000, 200), cells[1]: Usage(600, 1000, 200)},
        )
        self.assertEqual(self.store.load(["2026-11"]), {})

    def test_the_key_layout_is_the_readmes_and_old_periods_expire(self) -> None:
        odd = "user:ä:b\udcff*"  # a colon, a glob character, a lone surrogate
        now = time.time()
        day, month, _ = periods_of(now)
        self.store.add({(odd, day): Usage(1, 2, 3), (odd, month): Usage(1, 2, 3)})
        self.store.add({(odd, "total"): Usage(1, 2, 3)})
        r = self.server.client()
        raw = f"socks5twist:usage:{day}:user:ä:b\udcff*".encode("utf-8", "surrogatepass")
        self.assertEqual(r.hgetall(raw), {b"up": b"1", b"down": b"2", b"sessions": b"3"})
        day_end = Quota(1, "day").period_end(now)
        month_end = Quota(1, "month").period_end(now)
        assert day_end is not None and month_end is not None
        self.assertEqual(r.expiretime(raw), day_end + DAY_KEPT)
        self.assertEqual(
            r.expiretime(raw.replace(day.encode(), month.encode())), month_end + MONTH_KEPT
        )
        self.assertEqual(r.ttl(raw.replace(day.encode(), b"total")), -1)
        self.assertEqual(expires_at("2026-12"), calendar.timegm((2027, 1, 1, 0, 0, 0)) + MONTH_KEPT)
        self.assertEqual(self.store.load([day]), {(odd, day): Usage(1, 2, 3)})

    def test_leases_count_expire_and_come_back_after_a_restart(self) -> None:
        name = lease_set(1, "user:alice")
        self.assertTrue(self.store.lease(name, "a:1", 2, 30))
        self.assertTrue(self.store.lease(name, "b:1", 2, 0.3))
        self.assertFalse(self.store.lease(name, "c:1", 2, 30))
        self.assertTrue(self.store.lease(name, "a:1", 2, 30), "a lease held is held")
        time.sleep(0.5)  # b:1 expires (it was not renewed)
        self.assertTrue(self.store.lease(name, "c:1", 2, 30))
        self.assertFalse(self.store.lease(name, "d:1", 2, 30))
        self.store.unlease(name, "c:1")
        self.assertTrue(self.store.lease(name, "d:1", 2, 30))
        self.assertEqual(
            self.server.client().zrange(b"socks5twist:sessions:1:user:alice", 0, -1),
            [b"a:1", b"d:1"],
        )
        # A restart forgets them (no persistence); a renewal writes them again.
        self.server.stop()
        self.server.start()
        # The old connection is gone: this call fails, the next reconnects.
        self.assertRaises(RedisError, self.store.lease, name, "e:1", 2, 30)
        self.assertTrue(self.store.lease(name, "e:1", 2, 30), "reconnected on the next call")
        self.store.renew({name: ["a:1", "d:1"]}, 30)
        self.assertFalse(self.store.lease(name, "f:1", 2, 30))
        self.assertEqual(self.server.client().zcard(name), 3)

    def test_a_store_that_is_away_fails_each_call_at_once(self) -> None:
        self.server.stop()
        started = time.monotonic()
        for _ in range(3):
            self.assertRaises(RedisError, self.store.add, {("user:a", "total"): Usage(1)})
        self.assertLess(time.monotonic() - started, 1.0)


class RedisPasswordTests(TestCase):
    def setUp(self) -> None:
        self.server = started("--requirepass", "s3cret")
        self.addCleanup(self.server.close)

    def test_the_password_opens_it_and_is_never_shown(self) -> None:
        bad = parse_redis_url(f"redis://:wrong-s3cret@127.0.0.1:{self.server.port}/0")
        with self.assertRaises(StoreError) as caught:
            bad.open()
        message = str(caught.exception)
        self.assertIn(f"cannot use redis://127.0.0.1:{self.server.port}/0: ", message)
        self.assertNotIn("s3cret", message)
        good = parse_redis_url(f"redis://:s3cret@127.0.0.1:{self.server.port}/3")
        good.open()
        self.addCleanup(good.close)
        good.add({("user:a", "total"): Usage(7)})
        self.assertEqual(good.load(["total"]), {("user:a", "total"): Usage(7)})
        self.assertEqual(good.description, f"redis://127.0.0.1:{self.server.port}/3")
