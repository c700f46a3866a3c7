"""
The sans-I/O server connection: every (state, event) pair of its table,
the illegal ones included, without a reactor.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.trial.unittest import SynchronousTestCase

from socks5twist import codec, gsswire
from socks5twist.codec import Address, Command, Method, Reply
from socks5twist.connection import (
    MAX_PENDING,
    NEED_DATA,
    TRANSITIONS,
    ClientClosed,
    CommandRequested,
    CredentialsReceived,
    GSSTokenReceived,
    Kind,
    LocalProtocolError,
    MethodsOffered,
    ProtectionRequested,
    ProtocolViolation,
    ServerConnection,
    State,
)

GREETING = codec.build_greeting([Method.NO_AUTHENTICATION, Method.USERNAME_PASSWORD])
AUTH = codec.build_auth_request(b"alice", b"secret")
REQUEST = codec.build_request(Command.CONNECT, Address.for_ip("192.0.2.1", 80))
TARGET = Address.for_ip("192.0.2.9", 4000)
GSS_TOKEN = gsswire.build(gsswire.Mtyp.AUTHENTICATION, b"token")
GSS_LEVEL = gsswire.build(gsswire.Mtyp.PROTECTION, b"wrapped level")


def _feed(c: ServerConnection, data: bytes) -> object:
    c.receive_data(data)
    return c.next_event()


def reach(state: State) -> ServerConnection:
    c = ServerConnection()
    steps: dict[State, list[Callable[[ServerConnection], object]]] = {
        State.GREETING: [],
        State.CHOOSING: [lambda c: _feed(c, GREETING)],
        State.AUTH: [
            lambda c: _feed(c, GREETING),
            lambda c: c.select_method(Method.USERNAME_PASSWORD),
        ],
        State.LOGIN: [
            lambda c: _feed(c, GREETING),
            lambda c: c.select_method(Method.USERNAME_PASSWORD),
            lambda c: _feed(c, AUTH),
        ],
        State.REQUEST: [
            lambda c: _feed(c, GREETING),
            lambda c: c.select_method(Method.NO_AUTHENTICATION),
        ],
        State.REPLYING: [
            lambda c: _feed(c, GREETING),
            lambda c: c.select_method(Method.NO_AUTHENTICATION),
            lambda c: _feed(c, REQUEST),
        ],
    }
    gss = [lambda c: _feed(c, GREETING), lambda c: c.select_method(Method.GSSAPI)]
    steps[State.GSS_TOKEN] = gss
    steps[State.GSS_ACCEPTING] = [*gss, lambda c: _feed(c, GSS_TOKEN)]
    steps[State.GSS_LOGIN] = [*steps[State.GSS_ACCEPTING], lambda c: c.gss_established(b"t")]
    steps[State.GSS_LEVEL] = [*steps[State.GSS_LOGIN], lambda c: c.gss_login_decided(True)]
    steps[State.GSS_CHOOSING] = [*steps[State.GSS_LEVEL], lambda c: _feed(c, GSS_LEVEL)]
    steps[State.BINDING] = [*steps[State.REPLYING], lambda c: c.bind_listening(TARGET)]
    steps[State.OPEN] = [*steps[State.REPLYING], lambda c: c.reply(Reply.SUCCEEDED, TARGET)]
    steps[State.CLOSED] = [lambda c: c.close()]
    for step in steps[state]:
        step(c)
    assert c.state is state, (state, c.state)
    return c


# Each server-side kind and the call that makes it.
SERVER_CALLS: dict[Kind, Callable[[ServerConnection], bytes | None]] = {
    Kind.SELECT_NONE: lambda c: c.select_method(Method.NO_AUTHENTICATION),
    Kind.SELECT_PASSWORD: lambda c: c.select_method(Method.USERNAME_PASSWORD),
    Kind.SELECT_GSSAPI: lambda c: c.select_method(Method.GSSAPI),
    Kind.GSS_CONTINUE: lambda c: c.gss_continue(b"more"),
    Kind.GSS_ESTABLISHED: lambda c: c.gss_established(None),
    Kind.GSS_FAILED: lambda c: c.gss_failed(),
    Kind.LEVEL_CHOSEN: lambda c: c.level_chosen(b"answer"),
    Kind.REFUSE_METHODS: lambda c: c.refuse_methods(),
    Kind.LOGIN_OK: lambda c: c.login_decided(True),
    Kind.LOGIN_FAILED: lambda c: c.login_decided(False),
    Kind.REPLY_SUCCESS: lambda c: c.reply(Reply.SUCCEEDED, TARGET),
    Kind.BIND_FIRST_REPLY: lambda c: c.bind_listening(TARGET),
    Kind.REPLY_FAILURE: lambda c: c.reply(Reply.CONNECTION_REFUSED),
    Kind.CLOSE: lambda c: c.close(),
}
# Each client-side kind and the bytes that make it, where the state parses.
CLIENT_BYTES: dict[Kind, dict[State, bytes]] = {
    Kind.OFFER: {State.GREETING: GREETING},
    Kind.CREDENTIALS: {State.AUTH: AUTH},
    Kind.GSS_TOKEN: {State.GSS_TOKEN: GSS_TOKEN},
    Kind.LEVEL_ASKED: {State.GSS_LEVEL: GSS_LEVEL},
    Kind.REQUEST: {State.REQUEST: REQUEST},
}


PARSING_STATES = (State.GREETING, State.AUTH, State.REQUEST, State.GSS_TOKEN, State.GSS_LEVEL)


class TableTests(SynchronousTestCase):
    def test_every_server_event_in_every_state(self) -> None:
        """Legal pairs move as the table says; illegal ones are our own error."""
        for state in State:
            for kind, call in SERVER_CALLS.items():
                c = reach(state)
                expected = TRANSITIONS.get((state, kind))
                if expected is None:
                    with self.assertRaises(LocalProtocolError, msg=(state, kind)):
                        call(c)
                    self.assertIs(c.state, state, "an illegal move changes nothing")
                else:
                    call(c)
                    self.assertIs(c.state, expected, (state, kind))

    def test_every_client_message_in_every_state(self) -> None:
        """A message is parsed only in its own state; elsewhere it waits."""
        for state in State:
            for kind, wires in CLIENT_BYTES.items():
                c = reach(state)
                c.receive_data(GREETING if state is State.GREETING else wires.get(state, REQUEST))
                event = c.next_event()
                if (state, kind) in TRANSITIONS:
                    self.assertIs(c.state, TRANSITIONS[(state, kind)], (state, kind))
                    self.assertNotEqual(event, NEED_DATA)
                elif state not in PARSING_STATES:
                    # Bytes that arrive while the server acts wait, in order.
                    self.assertEqual(event, NEED_DATA, (state, kind))
                    self.assertIs(c.state, state)

    def test_eof_and_violation_end_every_state_but_closed(self) -> None:
        for state in State:
            self.assertEqual((state, Kind.EOF) in TRANSITIONS, state is not State.CLOSED)
            self.assertEqual((state, Kind.VIOLATION) in TRANSITIONS, state is not State.CLOSED)
            self.assertIs(TRANSITIONS[(state, Kind.CLOSE)], State.CLOSED)

    def test_the_table_names_only_known_states_and_kinds(self) -> None:
        for (state, kind), new in TRANSITIONS.items():
            self.assertIsInstance(state, State)
            self.assertIsInstance(kind, Kind)
            self.assertIsInstance(new, State)


class EventTests(SynchronousTestCase):
    def test_a_whole_negotiation_in_one_read(self) -> None:
        c = ServerConnection()
        c.receive_data(GREETING + AUTH + REQUEST + b"early")
        self.assertEqual(c.next_event(), MethodsOffered((0, 2)))
        self.assertEqual(c.next_event(), NEED_DATA, "the server must choose first")
        self.assertEqual(c.select_method(Method.USERNAME_PASSWORD), b"\x05\x02")
        self.assertEqual(c.next_event(), CredentialsReceived(b"alice", b"secret"))
        self.assertEqual(c.login_decided(True), b"\x01\x00")
        event = c.next_event()
        self.assertEqual(event, CommandRequested(Command.CONNECT, Address.for_ip("192.0.2.1", 80)))
        self.assertEqual(c.reply(Reply.SUCCEEDED, TARGET)[:3], b"\x05\x00\x00")
        self.assertIs(c.state, State.OPEN)
        self.assertEqual(c.take_data(), b"early")
        self.assertEqual(c.take_data(), b"")

    def test_one_byte_at_a_time(self) -> None:
        c = ServerConnection()
        for byte in GREETING[:-1]:
            c.receive_data(bytes([byte]))
            self.assertEqual(c.next_event(), NEED_DATA)
        c.receive_data(GREETING[-1:])
        self.assertIsInstance(c.next_event(), MethodsOffered)

    def test_eof_mid_message_is_client_closed(self) -> None:
        c = reach(State.REQUEST)
        c.receive_data(REQUEST[:5])
        c.receive_data(b"")
        self.assertEqual(c.next_event(), ClientClosed(State.REQUEST))
        self.assertIs(c.state, State.CLOSED)

    def test_eof_after_a_whole_message_gives_the_message_first(self) -> None:
        c = reach(State.REQUEST)
        c.receive_data(REQUEST)
        c.receive_data(b"")
        self.assertIsInstance(c.next_event(), CommandRequested)
        self.assertTrue(c.client_eof)

    def test_violations_carry_the_response_the_rfc_gives(self) -> None:
        cases = [
            (State.GREETING, b"\x04\x01\x00\x50", b""),  # SOCKS4: closed without reply
            (State.AUTH, b"\x02\x01a\x01b", b"\x01\x01"),  # RFC 1929 status failure
            (State.REQUEST, b"\x05\x09\x00\x01", b"\x05\x07"),  # X'07'
            (State.REQUEST, b"\x05\x01\x00\x07", b"\x05\x08"),  # X'08'
            (State.REQUEST, b"\x05\x01\x00\x03\x03a\x00b\x00\x50", b"\x05\x04"),  # bad name
        ]
        for state, wire, response in cases:
            c = reach(state)
            c.receive_data(wire)
            event = c.next_event()
            assert isinstance(event, ProtocolViolation), (state, wire, event)
            self.assertEqual(event.response[:2], response, wire)
            self.assertIs(event.phase, state)
            self.assertIs(c.state, State.CLOSED)
            self.assertTrue(event.why.isascii() and event.why.isprintable())

    def test_too_much_before_the_tunnel_is_a_violation(self) -> None:
        c = reach(State.REPLYING)
        c.receive_data(b"x" * MAX_PENDING)
        self.assertEqual(c.next_event(), NEED_DATA)
        c.receive_data(b"x")
        self.assertIsInstance(c.next_event(), ProtocolViolation)
        self.assertEqual(c.pending, 0, "a closed connection keeps nothing")

    def test_an_unknown_method_cannot_be_selected(self) -> None:
        c = reach(State.CHOOSING)
        with self.assertRaises(LocalProtocolError):
            c.select_method(Method.NO_ACCEPTABLE)

    def test_a_gssapi_negotiation_pipelined_in_one_read(self) -> None:
        """Tokens, the level and the request arrive at once: each waits its turn."""
        c = ServerConnection()
        c.receive_data(GREETING + GSS_TOKEN + GSS_TOKEN + GSS_LEVEL + REQUEST)
        self.assertIsInstance(c.next_event(), MethodsOffered)
        self.assertEqual(c.select_method(Method.GSSAPI), b"\x05\x01")
        self.assertEqual(c.next_event(), GSSTokenReceived(b"token"))
        self.assertEqual(c.next_event(), NEED_DATA, "the server answers the token first")
        self.assertEqual(c.gss_continue(b"back"), b"\x01\x01\x00\x04back")
        self.assertEqual(c.next_event(), GSSTokenReceived(b"token"))
        self.assertEqual(c.gss_established(None), b"", "no last token: nothing to send")
        self.assertEqual(c.next_event(), NEED_DATA, "the realm decides on the user first")
        self.assertEqual(c.gss_login_decided(True), b"")
        self.assertEqual(c.next_event(), ProtectionRequested(b"wrapped level"))
        self.assertEqual(c.level_chosen(b"ans"), b"\x01\x02\x00\x03ans")
        self.assertIsInstance(c.next_event(), CommandRequested)

    def test_gssapi_violations_are_answered_with_the_abort(self) -> None:
        cases = [
            (State.GSS_TOKEN, b"\x05\x01\x00\x01x", gsswire.ABORT),  # not version 1
            (State.GSS_TOKEN, b"\x01\x02\x00\x01x", gsswire.ABORT),  # the wrong type
            (State.GSS_TOKEN, b"\x01\x01\x00\x00", gsswire.ABORT),  # an empty token
            (State.GSS_TOKEN, b"\x01\xff", b""),  # the client's own abort: no answer
            (State.GSS_LEVEL, b"\x01\x01\x00\x01x", gsswire.ABORT),
        ]
        for state, wire, response in cases:
            c = reach(state)
            c.receive_data(wire)
            event = c.next_event()
            assert isinstance(event, ProtocolViolation), (state, wire, event)
            self.assertEqual(event.response, response, wire)
            self.assertIs(c.state, State.CLOSED)

    def test_a_gssapi_token_split_across_reads(self) -> None:
        c = reach(State.GSS_TOKEN)
        for byte in GSS_TOKEN[:-1]:
            c.receive_data(bytes([byte]))
            self.assertEqual(c.next_event(), NEED_DATA)
        c.receive_data(GSS_TOKEN[-1:])
        self.assertEqual(c.next_event(), GSSTokenReceived(b"token"))

    def test_the_refused_login_aborts(self) -> None:
        c = reach(State.GSS_LOGIN)
        self.assertEqual(c.gss_login_decided(False), gsswire.ABORT)
        self.assertIs(c.state, State.CLOSED)

    def test_credentials_repr_hides_the_password(self) -> None:
        self.assertNotIn("secret", repr(CredentialsReceived(b"alice", b"secret")))
