"""L{socks5twist.systemd}: sockets systemd passes, checked and served with their real family."""

from __future__ import annotations

import os
import socket

from twisted.internet.endpoints import AdoptedStreamServerEndpoint, TCP4ServerEndpoint
from twisted.internet.testing import MemoryReactor
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from socks5twist import systemd


class InheritedSocketTests(SynchronousTestCase):
    def _socket(self, family: int, kind: int, listen: bool = True) -> socket.socket:
        host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
        sock = socket.socket(family, kind)
        self.addCleanup(sock.close)
        sock.bind((host, 0))
        if listen:
            sock.listen()
        return sock

    def _endpoint(self, sock: socket.socket | int, family: int) -> AdoptedStreamServerEndpoint:
        fileno = sock if isinstance(sock, int) else sock.fileno()
        return AdoptedStreamServerEndpoint(MemoryReactor(), fileno, family)

    def test_a_dual_stack_socket_named_inet_is_served_as_inet6(self) -> None:
        """
        C{ListenStream=1080} passes an C{AF_INET6} socket; adopted as C{AF_INET}
        every peer address would be garbage.
        """
        endpoint = self._endpoint(self._socket(socket.AF_INET6, socket.SOCK_STREAM), socket.AF_INET)
        with capturedLogs() as logs:
            systemd.adopt_real_family(endpoint, "systemd:domain=INET:index=0")
        self.assertEqual(endpoint.addressFamily, socket.AF_INET6)
        [event] = logs
        self.assertIn("AF_INET6", event["log_format"].format(**event))

    def test_a_socket_of_the_named_family_is_left_alone(self) -> None:
        endpoint = self._endpoint(self._socket(socket.AF_INET, socket.SOCK_STREAM), socket.AF_INET)
        with capturedLogs() as logs:
            systemd.adopt_real_family(endpoint, "systemd:domain=INET:index=0")
        self.assertEqual(endpoint.addressFamily, socket.AF_INET)
        self.assertEqual(list(logs), [])

    def test_a_listening_stream_socket_passes_the_check(self) -> None:
        systemd.check(
            self._endpoint(self._socket(socket.AF_INET, socket.SOCK_STREAM), socket.AF_INET)
        )

    def test_a_datagram_socket_is_refused(self) -> None:
        endpoint = self._endpoint(
            self._socket(socket.AF_INET, socket.SOCK_DGRAM, False), socket.AF_INET
        )
        with self.assertRaises(ValueError) as raised:
            systemd.check(endpoint)
        self.assertIn("is not a listening stream socket", str(raised.exception))

    def test_a_stream_socket_that_does_not_listen_is_refused(self) -> None:
        endpoint = self._endpoint(
            self._socket(socket.AF_INET, socket.SOCK_STREAM, False), socket.AF_INET
        )
        self.assertRaises(ValueError, systemd.check, endpoint)

    def test_a_descriptor_that_is_no_socket_is_refused(self) -> None:
        read, write = os.pipe()
        self.addCleanup(os.close, read)
        self.addCleanup(os.close, write)
        with self.assertRaises(ValueError) as raised:
            systemd.check(self._endpoint(read, socket.AF_INET))
        self.assertIn(f"descriptor {read} is not a socket", str(raised.exception))

    def test_other_endpoints_are_not_touched(self) -> None:
        endpoint = TCP4ServerEndpoint(MemoryReactor(), 1080)
        systemd.check(endpoint)
        systemd.adopt_real_family(endpoint, "tcp:1080")

    def test_a_missing_systemd_socket_is_explained(self) -> None:
        why = systemd.explain("systemd:domain=INET:index=0", IndexError("list index out of range"))
        self.assertIn("systemd passed no such socket", why)
        self.assertIn("--fdname", why)
        why = systemd.explain("systemd:domain=INET:name=socks5", KeyError("socks5"))
        self.assertIn("systemd passed no such socket", why)
        self.assertEqual(systemd.explain("tcp:99999", ValueError("bad port")), "bad port")
