"""
L{socks5twist.client.http}: the CONNECT negotiation (sans I/O) and the
endpoint over an in-memory connection to the proxy.
"""

from __future__ import annotations

import base64
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from socks5twist.client import HandshakeTimeout, ProxyClosedError, ProxyProtocolError
from socks5twist.client.endpoint import destination
from socks5twist.client.http import (
    MAX_HEAD,
    HTTPConnectConnection,
    HTTPConnectEndpoint,
    HTTPConnectError,
    ProxyAuthenticationRequired,
)
from socks5twist.client.negotiation import NEED_DATA, Established, State

from .test_client_endpoint import FakeProxy, Recorder


def negotiation(credentials: tuple[bytes, bytes] | None = None) -> HTTPConnectConnection:
    return HTTPConnectConnection(destination("example.org", 443), credentials)


def answered(response: bytes) -> Any:
    n = negotiation()
    n.start()
    n.receive_data(response)
    return n, n.next_event()


class NegotiationTests(SynchronousTestCase):
    def test_request_names_the_destination_and_sends_basic_credentials(self) -> None:
        request = negotiation((b"bob", b"p:w")).start()
        token = base64.b64encode(b"bob:p:w")
        self.assertEqual(
            request,
            b"CONNECT example.org:443 HTTP/1.1\r\nHost: example.org:443\r\n"
            b"Proxy-Authorization: Basic " + token + b"\r\n\r\n",
        )
        ipv6 = HTTPConnectConnection(destination("::1", 80)).start()
        self.assertTrue(ipv6.startswith(b"CONNECT [::1]:80 HTTP/1.1\r\n"))

    def test_a_2xx_head_opens_and_what_follows_is_the_tunnels(self) -> None:
        n = negotiation()
        n.start()
        n.receive_data(b"HTTP/1.0 200 Connection established\r\nProxy-agent: x\r\n")
        self.assertIs(n.next_event(), NEED_DATA)
        n.receive_data(b"\r\nhello")
        self.assertIsInstance(n.next_event(), Established)
        self.assertIs(n.state, State.OPEN)
        self.assertEqual(n.take_data(), b"hello")

    def test_statuses_map_to_reply_codes(self) -> None:
        for status, code in ((403, 2), (502, 5), (504, 4), (500, 1), (404, 1)):
            n = negotiation()
            n.start()
            n.receive_data(f"HTTP/1.1 {status} Nope\r\n\r\n".encode())
            with self.assertRaises(HTTPConnectError) as caught:
                n.next_event()
            self.assertEqual((caught.exception.status, caught.exception.code), (status, code))
            self.assertIn(f"HTTP {status} Nope", str(caught.exception))
            self.assertIs(n.state, State.CLOSED)

    def test_401_and_407_are_authentication_failures(self) -> None:
        for status in (401, 407):
            n = negotiation((b"bob", b"pw"))
            n.start()
            n.receive_data(f"HTTP/1.1 {status} Auth\r\n\r\n".encode())
            with self.assertRaises(ProxyAuthenticationRequired) as caught:
                n.next_event()
            self.assertEqual(caught.exception.status, status)

    def test_hostile_responses_are_protocol_errors_with_escaped_text(self) -> None:
        for response in (
            b"SSH-2.0-OpenSSH\r\n\r\n",
            b"HTTP/2 200 OK\r\n\r\n",
            b"HTTP/1.1 200\x1b[31m OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 101 + b"\r\n",
        ):
            n = negotiation()
            n.start()
            n.receive_data(response)
            with self.assertRaises(ProxyProtocolError) as caught:
                n.next_event()
            self.assertNotIn("\x1b", str(caught.exception))

    def test_the_head_is_bounded(self) -> None:
        n = negotiation()
        n.start()
        n.receive_data(b"HTTP/1.1 200 OK\r\n" + b"X" * MAX_HEAD)
        with self.assertRaises(ProxyProtocolError):
            n.next_event()
        self.assertIs(n.state, State.CLOSED)

    def test_eof_before_the_head_ends(self) -> None:
        n = negotiation()
        n.start()
        n.receive_data(b"")
        with self.assertRaises(ProxyClosedError):
            n.next_event()
        n = negotiation()
        n.start()
        n.receive_data(b"HTTP/1.1 200")
        n.receive_data(b"")
        with self.assertRaises(ProxyProtocolError):
            n.next_event()


class EndpointTests(SynchronousTestCase):
    """The endpoint over L{FakeProxy}: what it writes, and what the caller gets."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.proxy = FakeProxy()
        self.recorder = Recorder()

    def connect(self, **kwargs: Any) -> tuple[Deferred[Any], Any, Any]:
        endpoint = HTTPConnectEndpoint(
            self.proxy, "example.org", 443, reactor=self.clock, timeout=5, **kwargs
        )
        d = endpoint.connect(Factory.forProtocol(lambda: self.recorder))
        protocol, transport = self.proxy.complete()
        return d, protocol, transport

    def test_opens_with_early_data_and_relays(self) -> None:
        d, protocol, transport = self.connect(username="bob", password="pw")
        self.assertIn(
            b"Proxy-Authorization: Basic " + base64.b64encode(b"bob:pw"), transport.value()
        )
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\n\r\nearly")
        self.assertIs(self.successResultOf(d), self.recorder)
        self.assertEqual(self.recorder.received, b"early")
        tunnel: Any = self.recorder.transport
        self.assertEqual(tunnel.getHost().host, "0.0.0.0")
        transport.clear()
        tunnel.write(b"up")
        self.assertEqual(transport.value(), b"up")

    def test_a_refusal_fails_the_deferred(self) -> None:
        d, protocol, _ = self.connect()
        protocol.dataReceived(b"HTTP/1.1 403 Forbidden\r\n\r\n")
        self.assertEqual(self.failureResultOf(d, HTTPConnectError).value.code, 2)

    def test_no_answer_times_out(self) -> None:
        d, _, _ = self.connect()
        self.assertNoResult(d)
        self.clock.advance(5)
        self.failureResultOf(d, HandshakeTimeout)

    def test_repr_hides_the_password(self) -> None:
        endpoint = HTTPConnectEndpoint(self.proxy, "h", 1, "bob", "Secret7", reactor=self.clock)
        self.assertNotIn("Secret7", repr(endpoint))
