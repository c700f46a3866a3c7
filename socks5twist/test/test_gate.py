"""The gate: a place under a limit is freed once, however often it is released."""

from __future__ import annotations

from ipaddress import ip_address

from twisted.internet.testing import MemoryReactorClock
from twisted.logger import Logger, capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from socks5twist import rules
from socks5twist.gate import Gate, Refusal, Slot
from socks5twist.policy import LOOPBACK_ONLY
from socks5twist.ruleset import ALLOW_ALL

CLIENT = ip_address("127.0.0.1")


def gate(**limits: int) -> Gate:
    settings = {
        "max_clients": 100,
        "max_sessions_per_client": 2,
        "max_sessions_per_user": 2,
        "max_udp_per_client": 2,
        **limits,
    }
    return Gate(MemoryReactorClock(), Logger(), clients=LOOPBACK_ONLY, rules=ALLOW_ALL, **settings)


class SlotTests(SynchronousTestCase):
    def test_a_slot_released_twice_frees_one_place(self) -> None:
        """Two places per client, both taken; one released twice: one more gets in."""
        g = gate()
        first, second = (g.admit_connection(CLIENT, "c") for _ in range(2))
        assert isinstance(first, Slot) and isinstance(second, Slot)
        first.release()
        first.release()
        self.assertIsInstance(g.admit_connection(CLIENT, "c"), Slot)
        with capturedLogs() as logs:
            refused = g.admit_connection(CLIENT, "c")
        self.assertEqual(refused, Refusal("too many sessions from this client"))
        self.assertEqual(g.limited["max-sessions-per-client"], 1)
        self.assertIn("2 sessions open from it", logs[0]["log_format"].format(**logs[0]))

    def test_every_limit_frees_its_place_once(self) -> None:
        g = gate(max_sessions_per_user=1, max_udp_per_client=1, max_logins_per_client=1)
        for admit in (
            lambda: g.admit_request("alice", "CONNECT", "c"),
            lambda: g.admit_udp(CLIENT, "c"),
            lambda: g.admit_login(CLIENT, "c"),
        ):
            slot = admit()
            assert isinstance(slot, Slot)
            self.assertIsInstance(admit(), Refusal)
            slot.release()
            slot.release()
            again = admit()
            self.assertIsInstance(again, Slot)
            self.assertIsInstance(admit(), Refusal)
        self.assertEqual(
            (dict(g.user_sessions), dict(g.udp_associations), dict(g.logins)),
            ({"alice": 1}, {CLIENT: 1}, {CLIENT: 1}),
        )

    def test_a_client_refused_by_max_clients_holds_no_place_of_its_own(self) -> None:
        g = gate(max_clients=1)
        first = g.admit_connection(CLIENT, "c")
        assert isinstance(first, Slot)
        other = ip_address("127.0.0.2")
        self.assertEqual(g.admit_connection(other, "o"), Refusal("too many clients"))
        self.assertEqual(dict(g.client_sessions), {CLIENT: 1})
        first.release()
        self.assertEqual(dict(g.client_sessions), {})
        self.assertIsInstance(g.admit_connection(other, "o"), Slot)


class RefusalLineTests(SynchronousTestCase):
    def test_a_limit_of_one_is_said_in_the_singular(self) -> None:
        """C{--max-... 1}: "1 session open", never "1 sessions open"."""
        g = gate(
            max_clients=1,
            max_sessions_per_client=1,
            max_sessions_per_user=1,
            max_udp_per_client=1,
            max_logins_per_client=1,
        )
        other = ip_address("127.0.0.2")
        with capturedLogs() as logs:
            for admit in (
                lambda: g.admit_connection(CLIENT, "c"),
                lambda: g.admit_connection(other, "o"),
                lambda: g.admit_request("alice", "CONNECT", "c"),
                lambda: g.admit_udp(CLIENT, "c"),
                lambda: g.admit_login(CLIENT, "c"),
            ):
                admit()
                self.assertIsInstance(admit(), Refusal)
        lines = [formatEvent(event) for event in logs]
        self.assertEqual(
            [line.split(": ", 1)[1] for line in lines],
            [
                "1 session open from it (--max-sessions-per-client)",
                "1 session open, the limit (--max-clients)",
                "1 session open (--max-sessions-per-user)",
                "1 association open (--max-udp-per-client)",
                "1 login in progress from it",
            ],
        )


class MethodTests(SynchronousTestCase):
    """Which methods a client may use, preferred first, by what is configured and [[auth]]."""

    AUTH = rules.parse(
        'default = "allow"\n'
        '[[auth]]\nclients = ["10.1.0.0/16"]\nmethod = "none"\n'
        '[[auth]]\nclients = ["10.2.0.0/16"]\nmethod = ["password", "gssapi"]\n'
        '[[auth]]\nclients = ["10.3.0.0/16"]\nmethod = "gssapi"\n'
        '[[auth]]\nclients = ["10.4.0.0/16"]\nmethod = ["password", "none"]\n'
    )

    def methods(self, client: str, password: bool, gssapi: bool) -> list[str]:
        g = Gate(
            MemoryReactorClock(),
            Logger(),
            clients=LOOPBACK_ONLY,
            rules=self.AUTH,
            max_clients=1,
            max_sessions_per_client=None,
            max_sessions_per_user=None,
            max_udp_per_client=1,
        )
        return [m.name for m in g.methods(ip_address(client), password, gssapi)]

    def test_without_a_matching_auth_table_gssapi_then_password(self) -> None:
        other = "192.0.2.1"
        self.assertEqual(self.methods(other, True, True), ["GSSAPI", "USERNAME_PASSWORD"])
        self.assertEqual(self.methods(other, True, False), ["USERNAME_PASSWORD"])
        self.assertEqual(self.methods(other, False, True), ["GSSAPI"])
        self.assertEqual(self.methods(other, False, False), ["NO_AUTHENTICATION"])

    def test_none_prefers_no_authentication_and_keeps_what_is_configured(self) -> None:
        self.assertEqual(
            self.methods("10.1.0.1", True, True),
            ["NO_AUTHENTICATION", "GSSAPI", "USERNAME_PASSWORD"],
        )
        self.assertEqual(self.methods("10.1.0.1", False, False), ["NO_AUTHENTICATION"])
        self.assertEqual(
            self.methods("10.4.0.1", True, True),
            ["USERNAME_PASSWORD", "NO_AUTHENTICATION", "GSSAPI"],
        )

    def test_a_list_is_the_order_of_preference(self) -> None:
        self.assertEqual(self.methods("10.2.0.1", True, True), ["USERNAME_PASSWORD", "GSSAPI"])
        self.assertEqual(self.methods("10.3.0.1", True, True), ["GSSAPI"])

    def test_a_table_naming_only_what_is_not_configured_refuses_every_method(self) -> None:
        """Never a fall back to no authentication (a library's rules are not checked)."""
        self.assertEqual(self.methods("10.3.0.1", True, False), [])
        self.assertEqual(self.methods("10.2.0.1", False, True), ["GSSAPI"])
