"""
The C{socks5:} endpoint string, through Twisted's own C{clientFromString}
(so the plugin in C{twisted/plugins} is found as an installed one is).
"""

from __future__ import annotations

from twisted.internet.endpoints import TCP4ClientEndpoint, UNIXClientEndpoint
from twisted.internet.endpoints import clientFromString as parse
from twisted.internet.task import Clock
from twisted.trial import unittest

from socks5twist.client import SOCKS5ClientEndpoint
from socks5twist.codec import Address, AddressType


class EndpointStringTests(unittest.TestCase):
    def setUp(self) -> None:
        self.reactor = Clock()

    def parse(self, description: str) -> SOCKS5ClientEndpoint:
        endpoint = parse(self.reactor, description)
        assert isinstance(endpoint, SOCKS5ClientEndpoint)
        return endpoint

    def test_host_port_and_a_tcp_proxy(self) -> None:
        endpoint = self.parse(r"socks5:example.org:443:proxy=tcp\:127.0.0.1\:1080")
        self.assertEqual(endpoint.destination, Address(AddressType.DOMAIN, "example.org", 443))
        assert isinstance(endpoint.proxy, TCP4ClientEndpoint)
        self.assertEqual((endpoint.proxy._host, endpoint.proxy._port), ("127.0.0.1", 1080))
        self.assertIsNone(endpoint.username)
        self.assertEqual(endpoint.timeout, 30)

    def test_credentials_and_timeout(self) -> None:
        endpoint = self.parse(
            r"socks5:example.org:443:proxy=tcp\:127.0.0.1\:1080:user=alice:password=s3=cr:timeout=5"
        )
        self.assertEqual(endpoint.username, b"alice")
        self.assertEqual(endpoint._credentials, (b"alice", b"s3=cr"))
        self.assertEqual(endpoint.timeout, 5)
        self.assertNotIn("s3=cr", repr(endpoint))

    def test_no_timeout(self) -> None:
        self.assertIsNone(self.parse(r"socks5:a.test:1:proxy=unix\:/x:timeout=0").timeout)

    def test_ipv6_destination_escaped_or_by_keyword(self) -> None:
        for description in [
            r"socks5:\:\:1:80:proxy=tcp\:\\\:\\\:1\:1080",
            r"socks5:host=\:\:1:port=80:proxy=tcp\:\\\:\\\:1\:1080",
            r"socks5:[\:\:1]:80:proxy=tcp\:\\\:\\\:1\:1080",
        ]:
            endpoint = self.parse(description)
            self.assertEqual(endpoint.destination, Address(AddressType.IPV6, "::1", 80))
            # Twisted's tcp: client strings take an IPv6 address as well.
            assert isinstance(endpoint.proxy, TCP4ClientEndpoint)
            self.assertEqual(endpoint.proxy._host, "::1")

    def test_a_unix_socket_proxy(self) -> None:
        endpoint = self.parse(r"socks5:192.0.2.1:25:proxy=unix\:/run/socks.sock")
        assert isinstance(endpoint.proxy, UNIXClientEndpoint)
        self.assertEqual(endpoint.proxy._path, "/run/socks.sock")

    def test_a_chain_is_a_proxy_that_is_socks5(self) -> None:
        endpoint = self.parse(
            r"socks5:example.org:80:proxy=socks5\:hop2.test\:1080\:proxy=tcp\\\:127.0.0.1\\\:1080"
        )
        inner = endpoint.proxy
        assert isinstance(inner, SOCKS5ClientEndpoint)
        self.assertEqual(inner.destination, Address(AddressType.DOMAIN, "hop2.test", 1080))
        self.assertIsInstance(inner.proxy, TCP4ClientEndpoint)

    def test_mistakes_are_value_errors(self) -> None:
        for description, message in [
            ("socks5:example.org:443", "needs proxy"),
            (r"socks5:example.org:proxy=tcp\:h\:1", "needs port"),
            (r"socks5:example.org:http:proxy=tcp\:h\:1", "must be a number"),
            (r"socks5:::1:80:proxy=tcp\:h\:1", "takes HOST:PORT"),
            (r"socks5:a.test:1:proxy=tcp\:h\:1:pasword=x", "unknown parameter 'pasword'"),
            (r"socks5:a.test:1:host=b.test:proxy=tcp\:h\:1", "host given twice"),
            (r"socks5:a.test:1:proxy=tcp\:h\:1:user=alice", "both username and password"),
            # Nonsense is no "no timeout" (nan > 0 is false, as 0 > 0 is).
            (r"socks5:a.test:1:proxy=tcp\:h\:1:timeout=nan", "timeout must be seconds"),
            (r"socks5:a.test:1:proxy=tcp\:h\:1:timeout=-5", "timeout must be seconds"),
            (r"socks5:a.test:1:proxy=tcp\:h\:1:timeout=inf", "timeout must be seconds"),
            (r"socks5:a.test:1:proxy=tcp\:h\:1:timeout=soon", "not 'soon'"),
            (r"socks5:a..test:1:proxy=tcp\:h\:1", "empty label"),
        ]:
            with self.assertRaises(ValueError) as raised:
                parse(self.reactor, description)
            self.assertIn(message, str(raised.exception))
