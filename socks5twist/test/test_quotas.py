"""
Quotas and live users through real sessions (in-memory transports, a fake
clock): X'02' and one line when a quota is used up, running sessions closed,
sessions of removed or disabled users closed after SIGHUP, the metrics,
and the options that refuse a quota nothing would remember.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.cred.credentials import IUsernamePassword
from twisted.internet import error
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs, formatEvent
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from socks5twist import SOCKS5ServerFactory, codec
from socks5twist.accounting import Usage
from socks5twist.liveusers import recheck
from socks5twist.rules import parse
from socks5twist.service import SOCKS5Service

from .helpers import HalfCloseTransport, connect_request, make_session, memory_portal
from .test_accounting import DEC_1, DEC_1_NOON, FakeThread, MemoryStore

NOT_ALLOWED = b"\x05\x02"
QUOTA = parse(
    """
default = "allow"

[[limit]]
name = "small"
users = ["alice"]
quota = "100/day"

[[limit]]
users = ["carol"]
disabled = true
"""
)


def login(user: bytes, password: bytes) -> bytes:
    """A greeting offering a password, and the login."""
    return codec.build_greeting([2]) + codec.build_auth_request(user, password)


def factory_with_store(store: MemoryStore, rules: Any = QUOTA, **kwargs: Any) -> Any:
    reactor = MemoryReactorClock()
    reactor.advance(DEC_1_NOON)
    session = make_session(
        memory_portal(alice="a", bob="b", carol="c"),
        reactor=reactor,
        rules=rules,
        accounting=store,
        **kwargs,
    )
    accountant: Any = session.factory.accountant
    accountant.thread = FakeThread(store)  # the store's work on this thread, at once
    accountant.start()
    return session


def another(session: Any, user: bytes, password: bytes) -> tuple[Any, HalfCloseTransport]:
    protocol: Any = session.factory.buildProtocol(session.transport.getPeer())
    transport = HalfCloseTransport(peerAddress=session.transport.getPeer())
    protocol.makeConnection(transport)
    protocol.dataReceived(login(user, password) + connect_request())
    return protocol, transport


def lines(logs: Sequence[dict[str, Any]]) -> list[str]:
    return [formatEvent(event) for event in logs]


class QuotaSessionTests(SynchronousTestCase):
    def test_quota_used_up_closes_the_tunnel_and_refuses_the_next_with_x02(self) -> None:
        store = MemoryStore()
        s = factory_with_store(store)
        metrics = s.factory.enable_metrics()
        s.send(login(b"alice", b"a") + connect_request())
        remote = s.remote()
        remote.dataReceived(b"x" * 60)
        s.send(b"y" * 40)  # 100 bytes: the quota
        with capturedLogs() as closing:
            s.reactor.advance(1)
        why = "quota of [[limit]] #1 (small) used: 100 B/day"
        self.assertEqual(lines(closing), [f"closing 1 session of user:alice: {why}"])
        self.assertTrue(s.transport.disconnecting)
        s.protocol.connectionLost(error.ConnectionDone())
        with capturedLogs() as refused:
            second, transport = another(s, b"alice", b"a")
        self.assertEqual(transport.value()[4:6], NOT_ALLOWED)
        self.assertEqual(
            lines(refused),
            [f"refused CONNECT for user:alice from 127.0.0.1:40000: {why}"],
        )
        second.connectionLost(error.ConnectionDone())
        # Bob is under no quota; his session goes on.
        bob, transport = another(s, b"bob", b"b")
        self.assertEqual(transport.value(), b"\x05\x02\x01\x00")  # logged in, connecting
        self.assertFalse(transport.disconnecting)
        s.reactor.advance(1)
        self.assertEqual(
            store.rows[("user:alice", DEC_1)], Usage(40, 60, 1)
        )  # (the refused request was not a session)
        text = metrics.render().decode()
        self.assertIn('socks5_limit_refusals_total{limit="quota"} 1.0', text)
        self.assertIn('socks5_sessions_closed_by_limit_total{reason="quota"} 1.0', text)
        self.assertIn('socks5_accounting_bytes_total{direction="down"} 60.0', text)
        self.assertIn("socks5_quota_keys_over 1.0", text)
        self.assertNotIn("alice", text)
        bob.connectionLost(error.ConnectionDone())

    def test_the_record_says_why_the_session_was_closed(self) -> None:
        s = factory_with_store(MemoryStore({("user:alice", DEC_1): Usage(100)}))
        with capturedLogs() as logs:
            s.send(login(b"alice", b"a") + connect_request())
            s.protocol.connectionLost(error.ConnectionDone())
        [line] = [event["session_line"] for event in logs if "session_line" in event]
        self.assertIn("reply=0x02", line)
        self.assertIn("(quota used)", line)

    def test_without_authentication_the_client_address_is_the_key(self) -> None:
        rules = parse('default = "allow"\n[[limit]]\nquota = "10/month"\n')
        reactor = MemoryReactorClock()
        reactor.advance(DEC_1_NOON)
        store = MemoryStore({("ip:127.0.0.1", "2026-12"): Usage(10)})
        s = make_session(reactor=reactor, rules=rules, accounting=store)
        accountant: Any = s.factory.accountant
        accountant.thread = FakeThread(store)
        accountant.start()
        s.send(codec.build_greeting([0]) + connect_request())
        self.assertEqual(s.take()[-10:-8], NOT_ALLOWED)

    def test_a_quota_without_a_store_is_refused_by_the_factory(self) -> None:
        with self.assertRaises(ValueError) as caught:
            SOCKS5ServerFactory(reactor=MemoryReactorClock(), rules=QUOTA)
        self.assertIn("[[limit]] #1 (small) has a quota", str(caught.exception))


class LiveUserTests(SynchronousTestCase):
    def sessions(self) -> tuple[Any, list[Any]]:
        s = make_session(memory_portal(alice="a", bob="b", carol="c"))
        s.send(login(b"alice", b"a") + connect_request())
        others = [another(s, user, user[:1])[1] for user in (b"alice", b"bob", b"carol")]
        return s, [s.transport, *others]

    def test_users_no_longer_known_are_closed_one_line_per_user(self) -> None:
        s, transports = self.sessions()
        [checker] = s.factory.portal.checkers[IUsernamePassword].checkers
        del checker.users[b"alice"]  # what a reread password file without alice holds
        with capturedLogs() as logs:
            self.assertEqual(recheck(s.factory), 2)
        self.assertEqual(
            lines(logs),
            ["closing 2 sessions of user:alice: no longer a user of the password files"],
        )
        self.assertEqual([t.disconnecting for t in transports], [True, True, False, False])
        self.assertEqual(s.factory.stats.closed["user-removed"], 2)

    def test_a_limit_that_disables_a_user_closes_their_sessions(self) -> None:
        s, transports = self.sessions()
        with capturedLogs() as none:
            self.assertEqual(recheck(s.factory), 0)  # the default rules: no limits
        self.assertEqual(lines(none), [])
        s.factory.rules = QUOTA
        with capturedLogs() as logs:
            recheck(s.factory)
        self.assertEqual(lines(logs), ["closing 1 session of user:carol: disabled by [[limit]] #2"])
        self.assertEqual([t.disconnecting for t in transports], [False, False, False, True])

    def test_a_checker_that_cannot_list_its_users_closes_nobody(self) -> None:
        s, transports = self.sessions()
        checkers = s.factory.portal.checkers[IUsernamePassword].checkers
        checkers.append(object())  # as --auth unix: who is a user cannot be listed
        del checkers[0].users[b"alice"]
        self.assertEqual(recheck(s.factory), 0)
        self.assertFalse(any(t.disconnecting for t in transports))


class OptionTests(SynchronousTestCase):
    def rules_file(self) -> str:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write('default = "allow"\n[[limit]]\nusers = ["alice"]\nquota = "1GiB/month"\n')
        return path

    def test_a_quota_needs_accounting(self) -> None:
        from socks5twist.tap import Options

        path = self.rules_file()
        with self.assertRaises(usage.UsageError) as caught:
            Options().parseOptions(["--port", "tcp:0", "--rules", path])
        self.assertEqual(
            str(caught.exception),
            f"--rules {path}: [[limit]] #1 has a quota, which needs an accounting store"
            " (where used amounts survive restarts): add --accounting sqlite:PATH",
        )
        options = Options()
        db = self.mktemp()
        options.parseOptions(["--port", "tcp:0", "--rules", path, "--accounting", f"sqlite:{db}"])
        self.assertEqual(options["accounting"].path, db)

    def test_accounting_values_that_cannot_work(self) -> None:
        from socks5twist.tap import Options

        for value, why in [
            ("postgres://db/accounting", "--accounting takes sqlite:PATH"),
            ("redis://:s3cret@127.0.0.1:6379/x", "redis://127.0.0.1:6379/x: the database is"),
            ("redis://:s3cret@127.0.0.1:99999/0", "not redis://[:PASSWORD@]HOST"),
            ("mysql://root:s3cret@db", "not 'mysql://root:<hidden>@db'"),
            ("sqlite:", "--accounting takes sqlite:PATH"),
            ("sqlite:/nonexistent/dir/a.db", "no directory /nonexistent/dir"),
        ]:
            with self.assertRaises(usage.UsageError) as caught:
                Options().parseOptions(["--port", "tcp:0", "--accounting", value])
            self.assertIn(why, str(caught.exception))
            self.assertNotIn("s3cret", str(caught.exception))

    def test_a_redis_url_names_the_store_without_its_password(self) -> None:
        from socks5twist.tap import Options

        options = Options()
        options.parseOptions(
            ["--port", "tcp:0", "--accounting", "redis://:s3cret@127.0.0.1:6380/2"]
        )
        self.assertEqual(options["accounting"].description, "redis://127.0.0.1:6380/2")
        self.assertEqual(options["accounting-failure"], "open")
        with self.assertRaises(usage.UsageError) as caught:
            Options().parseOptions(["--port", "tcp:0", "--accounting-failure", "maybe"])
        self.assertIn("--accounting-failure is open or closed, not 'maybe'", str(caught.exception))

    def test_an_accounting_url_with_a_password_is_not_echoed_with_it(self) -> None:
        from socks5twist.tap import Options

        with self.assertRaises(usage.UsageError) as caught:
            Options().parseOptions(["--port", "tcp:0", "--accounting", "redis://:S3cr/t@h:6379/0"])
        self.assertIn("not redis://[:PASSWORD@]HOST[:PORT][/DB]", str(caught.exception))
        self.assertNotIn("S3cr", str(caught.exception))

    def test_a_reload_that_adds_a_quota_without_accounting_keeps_the_old_rules(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write('default = "allow"\n')
        factory = SOCKS5ServerFactory(reactor=MemoryReactorClock())
        service = SOCKS5Service(factory, path)
        self.assertTrue(service.reload_rules())
        with open(path, "w") as f:
            f.write('default = "allow"\n[[limit]]\nquota = "1GiB/day"\n')
        with capturedLogs() as logs:
            self.assertFalse(service.reload_rules())
        self.assertEqual(factory.rules.limits, ())
        self.assertIn("rules NOT reloaded", lines(logs)[0])
        self.assertIn("start with --accounting sqlite:PATH", lines(logs)[0])
