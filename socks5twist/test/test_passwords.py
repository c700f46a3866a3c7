"""The password file: its format, the hash schemes, reloads, and what never leaks."""

from __future__ import annotations

import os
from typing import Any, cast

import bcrypt
from passlib.hash import sha256_crypt, sha512_crypt
from twisted.cred import error
from twisted.cred.credentials import UsernamePassword
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import ILogObserver, LogLevel, formatEvent, globalLogPublisher
from twisted.python.filepath import FilePath
from twisted.trial.unittest import TestCase

from socks5twist.passwords import (
    HashThreads,
    PasswordFile,
    PasswordFileError,
    Scheme,
    parse,
    verify,
)

BCRYPT = bcrypt.hashpw(b"bc:secret", bcrypt.gensalt(rounds=4))
SHA256 = sha256_crypt.using(rounds=1000).hash("sha256 secret").encode()
SHA512 = sha512_crypt.using(rounds=1000).hash("sha512 secret").encode()


def run_now(f: Any, *args: Any) -> defer.Deferred[Any]:
    """Stands in for the hash threads: runs at once, on this thread."""
    return defer.maybeDeferred(f, *args)


class FormatTests(TestCase):
    def assertRejected(self, data: bytes, *fragments: str) -> str:
        with self.assertRaises(PasswordFileError) as caught:
            parse(data, "/etc/socks5/passwd")
        message = str(caught.exception)
        for fragment in fragments:
            self.assertIn(fragment, message)
        return message

    def test_password_is_the_rest_of_the_line_colons_included(self) -> None:
        accounts = parse(b"alice:s3cr:et\n", "f")
        self.assertEqual(accounts.users[b"alice"].value, b"s3cr:et")

    def test_only_the_line_ending_is_removed(self) -> None:
        accounts = parse(b"a:one \r\nb: two\t\nc:three\r\r\nd:last", "f")
        values = {user: secret.value for user, secret in accounts.users.items()}
        self.assertEqual(values, {b"a": b"one ", b"b": b" two\t", b"c": b"three\r", b"d": b"last"})

    def test_usernames_are_exact_bytes(self) -> None:
        accounts = parse(b" alice:x\nAlice:y\n\xc3\xa9:z\n", "f")
        self.assertEqual(set(accounts.users), {b" alice", b"Alice", b"\xc3\xa9"})

    def test_blank_lines_and_comments_are_ignored(self) -> None:
        accounts = parse(b"# users\n\n\r\n#bob:x\nalice:x\n", "f")
        self.assertEqual(list(accounts.users), [b"alice"])

    def test_empty_user_is_rejected_with_its_line(self) -> None:
        self.assertRejected(b"# c\nalice:x\n:secret\n", "/etc/socks5/passwd, line 3", "empty user")

    def test_empty_password_is_rejected_with_its_line(self) -> None:
        self.assertRejected(b"alice:x\nbob:\n", "line 2", "empty password", "bob")

    def test_line_without_colon_is_rejected(self) -> None:
        self.assertRejected(b"alice:x\n\nbob\n", "line 3", "no ':'")

    def test_whitespace_only_line_is_not_blank(self) -> None:
        self.assertRejected(b"alice:x\n  \n", "line 2")

    def test_duplicate_user_is_rejected_naming_both_lines(self) -> None:
        self.assertRejected(b"alice:x\nbob:y\nalice:z\n", "line 3", "alice", "line 1")

    def test_fields_longer_than_rfc1929_allows_are_rejected(self) -> None:
        self.assertRejected(b"u:" + b"p" * 256 + b"\n", "line 1", "255")
        self.assertRejected(b"u" * 256 + b":p\n", "line 1", "255")
        parse(b"u" * 255 + b":" + b"p" * 255 + b"\n", "f")

    def test_unsupported_hashes_are_rejected_naming_the_option_to_use(self) -> None:
        for value, what in (
            (b"$apr1$abc$defghijklmnopqrstuvwx.", "Apache MD5"),
            (b"$1$abcdefgh$ijklmnopqrstuvwxyz0123", "MD5-crypt"),
            (b"$y$j9T$abc$def", "yescrypt"),
            (b"{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=", "SHA-1"),
            (b"$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA", "unsupported scheme ($argon2id$)"),
        ):
            message = self.assertRejected(b"u:" + value + b"\n", "line 1", what, "htpasswd -B")
            self.assertIn("mkpasswd -m sha512crypt", message)
            self.assertNotIn(value.decode(), message)

    def test_malformed_supported_hashes_are_rejected(self) -> None:
        self.assertRejected(b"u:$2y$10$tooshort\n", "line 1", "malformed bcrypt")
        self.assertRejected(b"u:$6$salt\n", "line 1", "malformed SHA512_CRYPT")
        self.assertRejected(b"u:$5$\xff$x\n", "line 1", "malformed SHA256_CRYPT")

    def test_schemes_are_recognised(self) -> None:
        accounts = parse(
            b"p:plain\nb:"
            + BCRYPT
            + b"\ny:$2y$"
            + BCRYPT[4:]
            + b"\n5:"
            + SHA256
            + b"\n6:"
            + SHA512,
            "f",
        )
        schemes = {user: secret.scheme for user, secret in accounts.users.items()}
        self.assertEqual(
            schemes,
            {
                b"p": Scheme.PLAIN,
                b"b": Scheme.BCRYPT,
                b"y": Scheme.BCRYPT,
                b"5": Scheme.SHA256_CRYPT,
                b"6": Scheme.SHA512_CRYPT,
            },
        )

    def test_dummy_hash_is_of_the_most_common_kind(self) -> None:
        other = sha512_crypt.using(rounds=1000).hash("x").encode()
        accounts = parse(b"a:" + BCRYPT + b"\nb:" + SHA512 + b"\nc:" + other + b"\nd:plain\n", "f")
        assert accounts.dummy is not None
        self.assertEqual(accounts.dummy.value, SHA512)
        self.assertIsNone(parse(b"a:plain\n", "f").dummy)

    def test_no_password_in_errors_or_reprs(self) -> None:
        for data in (b"alice:hunter2\nalice:hunter3\n", b"alice:hunter2\n:hunter3\n"):
            self.assertNotIn("hunter", self.assertRejected(data))
        accounts = parse(b"alice:hunter2\nbob:" + BCRYPT + b"\n", "f")
        self.assertNotIn("hunter2", repr(accounts))
        for secret in accounts.users.values():
            self.assertNotIn("hunter2", repr(secret))
            self.assertNotIn(BCRYPT.decode()[7:], repr(secret))


class VerifyTests(TestCase):
    def test_each_scheme_accepts_its_password_and_rejects_others(self) -> None:
        accounts = parse(
            b"p:pl:ain\nb:"
            + BCRYPT
            + b"\ny:$2y$"
            + BCRYPT[4:]
            + b"\n5:"
            + SHA256
            + b"\n6:"
            + SHA512,
            "f",
        )
        right = {
            b"p": b"pl:ain",
            b"b": b"bc:secret",
            b"y": b"bc:secret",
            b"5": b"sha256 secret",
            b"6": b"sha512 secret",
        }
        for user, password in right.items():
            secret = accounts.users[user]
            self.assertTrue(verify(secret, password), user)
            for wrong in (password + b"x", password[:-1], b"", b"\xff\x00", password.upper()):
                self.assertFalse(verify(secret, wrong), (user, wrong))

    def test_bcrypt_looks_at_72_bytes_as_htpasswd_does(self) -> None:
        long = b"x" * 80
        secret = parse(b"u:" + bcrypt.hashpw(long[:72], bcrypt.gensalt(rounds=4)), "f").users[b"u"]
        self.assertTrue(verify(secret, long))
        self.assertFalse(verify(secret, b"x" * 71))


class CheckerTests(TestCase):
    def setUp(self) -> None:
        self.path = FilePath(self.mktemp())
        self.clock = MemoryReactorClock()
        self.events: list[dict[str, Any]] = []
        observer = cast(ILogObserver, self.events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

    def checker(self, content: bytes) -> PasswordFile:
        self.path.setContent(content)
        checker = PasswordFile(self.path.path, self.clock, run_now)
        checker.load()
        return checker

    def login(self, checker: PasswordFile, user: bytes, password: bytes) -> Any:
        return checker.requestAvatarId(UsernamePassword(user, password))

    def rewrite(self, content: bytes) -> None:
        """Change the file so that a stat sees it (size and mtime both move)."""
        self.path.setContent(content)
        st = os.stat(self.path.path)
        os.utime(self.path.path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))

    def errors(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("log_level") == LogLevel.error]

    def test_a_file_of_mixed_hash_costs_is_warned_of_at_load(self) -> None:
        self.checker(b"alice:" + BCRYPT + b"\nbob:" + SHA512 + b"\n")
        warnings = [e for e in self.events if e.get("log_level") == LogLevel.warn]
        self.assertEqual(len(warnings), 1)
        self.assertIn("told apart by timing", warnings[0]["log_format"])
        self.events.clear()
        self.checker(b"alice:" + BCRYPT + b"\nbob:plain\n")
        self.assertEqual([e for e in self.events if e.get("log_level") == LogLevel.warn], [])

    def test_avatar_id_is_the_username_bytes(self) -> None:
        checker = self.checker(b"alice:secret\nbob:" + BCRYPT + b"\n")
        self.assertEqual(self.successResultOf(self.login(checker, b"alice", b"secret")), b"alice")
        self.assertEqual(self.successResultOf(self.login(checker, b"bob", b"bc:secret")), b"bob")

    def test_wrong_password_and_unknown_user_are_unauthorized(self) -> None:
        checker = self.checker(b"alice:secret\nbob:" + BCRYPT + b"\n")
        for user, password in ((b"alice", b"secreT"), (b"bob", b"secret"), (b"carol", b"x")):
            self.failureResultOf(self.login(checker, user, password), error.UnauthorizedLogin)

    def test_unknown_user_is_checked_against_a_dummy_hash(self) -> None:
        checked: list[Any] = []

        def spy(f: Any, *args: Any) -> defer.Deferred[Any]:
            checked.append(args[0])
            return run_now(f, *args)

        self.path.setContent(b"alice:" + SHA512 + b"\n")
        checker = PasswordFile(self.path.path, self.clock, spy)
        checker.load()
        # Even the right password of another user does not let an unknown name in.
        self.failureResultOf(self.login(checker, b"mallory", b"sha512 secret"))
        self.assertEqual([s.value for s in checked], [SHA512])

    def test_hash_checks_run_in_the_given_runner_and_plain_ones_do_not(self) -> None:
        calls: list[Any] = []
        pending: list[defer.Deferred[Any]] = []

        def later(f: Any, *args: Any) -> defer.Deferred[Any]:
            calls.append(f)
            d: defer.Deferred[Any] = defer.Deferred()
            pending.append(d)
            return d

        self.path.setContent(b"alice:secret\ncarol:other\n")
        checker = PasswordFile(self.path.path, self.clock, later)
        checker.load()
        self.successResultOf(self.login(checker, b"alice", b"secret"))
        self.assertEqual(calls, [], "a file of plain passwords needs no thread")
        self.path.setContent(b"alice:secret\nbob:" + BCRYPT + b"\n")
        checker.load()
        result = self.login(checker, b"bob", b"bc:secret")
        self.assertNoResult(result)
        self.assertEqual(len(calls), 1)
        pending[0].callback(True)
        self.assertEqual(self.successResultOf(result), b"bob")

    def test_plain_users_cost_a_dummy_check_where_the_file_holds_hashes(self) -> None:
        """Timing tells a plain user apart neither from an unknown nor a hashed one."""
        checked: list[Any] = []

        def spy(f: Any, *args: Any) -> defer.Deferred[Any]:
            checked.append(args[0])
            return run_now(f, *args)

        self.path.setContent(b"alice:secret\nbob:" + SHA512 + b"\n")
        checker = PasswordFile(self.path.path, self.clock, spy)
        checker.load()
        self.assertEqual(self.successResultOf(self.login(checker, b"alice", b"secret")), b"alice")
        self.failureResultOf(self.login(checker, b"alice", b"wrong"), error.UnauthorizedLogin)
        self.assertEqual([s.value for s in checked], [SHA512, SHA512])

    def test_a_cancelled_check_costs_nothing_when_its_turn_comes(self) -> None:
        queued: list[tuple[Any, tuple[Any, ...]]] = []

        def later(f: Any, *args: Any) -> defer.Deferred[Any]:
            d: defer.Deferred[Any] = defer.Deferred()
            queued.append((f, args))
            return d

        self.path.setContent(b"bob:" + BCRYPT + b"\n")
        checker = PasswordFile(self.path.path, self.clock, later)
        checker.load()
        login = self.login(checker, b"bob", b"bc:secret")
        login.cancel()
        self.failureResultOf(login, defer.CancelledError)
        f, args = queued[0]
        self.assertFalse(f(*args), "a cancelled check ran the hash")

    def test_too_many_waiting_hash_checks_fail_at_once(self) -> None:
        def never(f: Any, *args: Any) -> defer.Deferred[Any]:
            return defer.Deferred()

        self.path.setContent(b"bob:" + BCRYPT + b"\n")
        checker = PasswordFile(self.path.path, self.clock, never)
        checker.load()
        checker.max_pending = 3
        for _ in range(3):
            self.assertNoResult(self.login(checker, b"bob", b"bc:secret"))
        self.failureResultOf(self.login(checker, b"bob", b"bc:secret"), error.UnauthorizedLogin)
        self.failureResultOf(self.login(checker, b"bob", b"bc:secret"), error.UnauthorizedLogin)
        warnings = [e for e in self.events if e.get("log_level") == LogLevel.warn]
        self.assertEqual(len(warnings), 1)

    def test_file_is_not_read_again_while_unchanged(self) -> None:
        checker = self.checker(b"alice:secret\n")
        reads: list[int] = []
        original = checker.reload

        def counting() -> defer.Deferred[bool]:
            reads.append(1)
            return original()

        checker.reload = counting  # type: ignore[method-assign]
        for _ in range(5):
            self.clock.advance(2)
            self.successResultOf(self.login(checker, b"alice", b"secret"))
        self.assertEqual(reads, [])

    def test_change_is_seen_on_a_login_after_a_second(self) -> None:
        checker = self.checker(b"alice:secret\n")
        self.rewrite(b"alice:secret\nbob:new\n")
        # Within the second, no stat: the old accounts answer.
        self.failureResultOf(self.login(checker, b"bob", b"new"))
        self.clock.advance(1.5)
        self.assertEqual(self.successResultOf(self.login(checker, b"bob", b"new")), b"bob")

    def test_a_reload_says_how_many_users_in_plain_english(self) -> None:
        checker = self.checker(b"alice:secret\nbob:x\n")
        said = []
        for content in (b"alice:secret\n", b"alice:secret\nbob:x\n"):
            self.path.setContent(content)
            self.assertTrue(self.successResultOf(checker.reload()))
            said.append(formatEvent(self.events[-1]))
        self.assertEqual(
            said,
            [
                f"passwords reloaded from {self.path.path}: 1 user",
                f"passwords reloaded from {self.path.path}: 2 users",
            ],
        )
        self.assertEqual(repr(checker), f"<PasswordFile {self.path.path!r}: 2 users>")

    def test_broken_file_keeps_the_old_accounts_and_logs_once(self) -> None:
        checker = self.checker(b"alice:secret\n")
        self.rewrite(b"alice:secret\nbob\n")
        for _ in range(3):
            self.clock.advance(1.5)
            self.successResultOf(self.login(checker, b"alice", b"secret"))
        errors = self.errors()
        self.assertEqual(len(errors), 1)
        self.assertIn("line 2", errors[0]["error"])
        # A SIGHUP says so again: the operator asked.
        self.assertFalse(self.successResultOf(checker.reload()))
        self.path.setContent(b"carol:x\n")
        self.assertTrue(self.successResultOf(checker.reload()))
        self.failureResultOf(self.login(checker, b"alice", b"secret"))
        self.successResultOf(self.login(checker, b"carol", b"x"))

    def test_missing_file_is_logged_once_and_the_old_accounts_stay(self) -> None:
        checker = self.checker(b"alice:secret\n")
        self.path.remove()
        for _ in range(4):
            self.clock.advance(1.5)
            self.successResultOf(self.login(checker, b"alice", b"secret"))
        errors = self.errors()
        self.assertEqual(len(errors), 1)
        self.assertIn("No such file", errors[0]["error"])
        self.path.setContent(b"bob:y\n")
        self.clock.advance(1.5)
        self.successResultOf(self.login(checker, b"bob", b"y"))

    def test_missing_or_unreadable_file_fails_to_load(self) -> None:
        checker = PasswordFile(self.path.path, self.clock, run_now)
        with self.assertRaises(PasswordFileError) as caught:
            checker.load()
        self.assertIn(self.path.path, str(caught.exception))
        self.path.makedirs()
        self.assertRaises(PasswordFileError, checker.load)

    def test_logins_during_a_reload_wait_for_the_new_accounts(self) -> None:
        pending: list[tuple[defer.Deferred[Any], Any, tuple[Any, ...]]] = []

        def later(f: Any, *args: Any) -> defer.Deferred[Any]:
            d: defer.Deferred[Any] = defer.Deferred()
            pending.append((d, f, args))
            return d

        self.path.setContent(b"alice:secret\n")
        checker = PasswordFile(self.path.path, self.clock, later)
        checker.load()
        self.path.setContent(b"bob:new\n")
        reloaded = checker.reload()
        checker.reload()  # one read for both
        self.assertEqual(len(pending), 1)
        waiting = self.login(checker, b"bob", b"new")
        self.assertNoResult(waiting)
        d, f, args = pending.pop()
        d.callback(f(*args))
        self.assertEqual(self.successResultOf(waiting), b"bob")
        self.assertTrue(self.successResultOf(reloaded))

    def test_no_password_in_log_events_or_repr(self) -> None:
        checker = self.checker(b"alice:hunter2\n")
        self.rewrite(b"alice:hunter2\nalice:hunter3\n")
        self.clock.advance(1.5)
        self.failureResultOf(self.login(checker, b"alice", b"hunter4"))
        self.successResultOf(checker.reload())
        self.assertTrue(self.errors())
        self.assertNotIn("hunter", repr(self.events))
        self.assertNotIn("hunter", repr(checker))


class HashThreadsTests(TestCase):
    def test_runs_off_the_reactor_thread_and_stops(self) -> defer.Deferred[None]:
        import threading

        from twisted.internet import reactor

        threads = HashThreads(reactor, size=2)
        self.addCleanup(threads.stop)
        d = threads.run(lambda: threading.current_thread().name)

        def check(name: str) -> None:
            self.assertNotEqual(name, threading.current_thread().name)
            self.assertIn("socks5twist-passwords", name)

        return d.addCallback(check)


class OptionTests(TestCase):
    """C{--auth file:PATH} builds our checker, loads it at start-up, and SIGHUP rereads it."""

    def test_bad_file_is_a_usage_error_naming_the_line(self) -> None:
        from twisted.python import usage

        from socks5twist.tap import Options

        path = FilePath(self.mktemp())
        path.setContent(b"alice:x\n:secret\n")
        with self.assertRaises(usage.UsageError) as caught:
            Options().parseOptions(["--auth", f"file:{path.path}"])
        self.assertIn(f"{path.path}, line 2: empty user name", str(caught.exception))
        self.assertNotIn("secret", str(caught.exception))
        missing = self.mktemp()
        with self.assertRaises(usage.UsageError) as caught:
            Options().parseOptions(["--auth", f"file:{missing}"])
        self.assertIn("No such file", str(caught.exception))

    def test_service_rereads_password_files_on_hang_up(self) -> None:
        from socks5twist.tap import Options, makeService

        path = FilePath(self.mktemp())
        path.setContent(b"alice:x\n")
        options = Options()
        options.parseOptions(["--port", "tcp:0:interface=127.0.0.1", "--auth", f"file:{path.path}"])
        top = makeService(options)
        [checker] = top.password_files
        self.assertIsInstance(checker, PasswordFile)
        checker._run = run_now
        path.setContent(b"bob:y\n")
        top.hang_up()
        self.assertEqual(list(checker.accounts.users), [b"bob"])
