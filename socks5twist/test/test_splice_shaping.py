"""
The splice relay under a [[limit]]'s bandwidth, on the real reactor: a
direction in debt stops watching its source and reads again on a timer of
the tunnel's owner (the reactor's, or the relay thread's once it has moved);
the rate holds either way, and the bytes arrive whole.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from socks5twist import splice
from socks5twist.limits import Limit
from socks5twist.shaping import Shaper

from .splicing import make_tunnels, read, start, turn

KIB = 1024
RATE = 400 * KIB  # a full bucket: 40 KiB
SENT = 400 * KIB


def send_in_thread(sock: socket.socket, data: bytes) -> threading.Thread:
    """Send C{data} from a thread (blocking: the relay takes it as it may)."""

    def send() -> None:
        sock.setblocking(True)
        sock.sendall(data)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


class ShapedSpliceTests(TestCase):
    if not splice.available():
        skip = "no splice(2) on this platform"

    @defer.inlineCallbacks
    def transfer(self, move: bool, up: bool = False) -> Any:
        """Send SENT bytes to the client (C{up}: from it) at RATE; the seconds they took."""
        shaping = Shaper().shaping(Limit(index=1, bandwidth=RATE), "user:alice")
        ((client, relay, remote, _),) = yield make_tunnels(self, 1, shaping=shaping)
        yield start(client, relay, move)
        data = bytes(range(256)) * (SENT // 256)
        began = time.monotonic()
        sender = send_in_thread(client if up else remote, data)
        received = yield read(remote if up else client, SENT)
        took = time.monotonic() - began
        sender.join(5)
        self.assertEqual(received, data)
        relay.close()
        return took

    @defer.inlineCallbacks
    def test_on_the_reactor_the_rate_holds(self) -> Any:
        took = yield self.transfer(move=False)
        # What the bucket held at the start (0.1 s) and one read ahead of the
        # debt are all it may go faster by; slower is the machine's doing.
        self.assertGreaterEqual(took, (SENT - RATE * 0.1 - 64 * KIB) / RATE)
        self.assertLess(took, 3.0)

    @defer.inlineCallbacks
    def test_in_the_relay_thread_the_rate_holds(self) -> Any:
        took = yield self.transfer(move=True)
        self.assertGreaterEqual(took, (SENT - RATE * 0.1 - 64 * KIB) / RATE)
        self.assertLess(took, 3.0)

    @defer.inlineCallbacks
    def test_from_the_client_the_rate_holds_too(self) -> Any:
        took = yield self.transfer(move=True, up=True)
        self.assertGreaterEqual(took, (SENT - RATE * 0.1 - 64 * KIB) / RATE)
        self.assertLess(took, 3.0)

    @defer.inlineCallbacks
    def test_a_direction_in_debt_stops_watching_its_source(self) -> Any:
        """Not a busy loop: the source socket is out of the reactor's set until paid."""
        shaping = Shaper().shaping(Limit(index=1, bandwidth=RATE), "user:alice")
        ((client, relay, remote, _),) = yield make_tunnels(self, 1, shaping=shaping)
        yield start(client, relay, False)
        remote.sendall(b"x" * (100 * KIB))  # more than the 40 KiB in hand
        for _ in range(100):
            if relay._down.throttled:
                break
            yield turn()
        self.assertTrue(relay._down.throttled)
        self.assertFalse(relay._remote.reading)
        self.assertTrue(relay._client.reading)  # the other direction is free
        received = yield read(client, 100 * KIB)
        self.assertEqual(len(received), 100 * KIB)
        relay.close()
