"""
GSSAPI's first context step in the reactor's thread pool, on the real
reactor: a fake initiator whose first step blocks (as one waiting for a slow
KDC would) until the test releases it.  The reactor keeps running meanwhile;
the proxy is not connected to before the step is done; cancelling, the
timeout and the step's failure end the attempt cleanly (for C{connect()} and
C{bind()}); the context is used by the reactor thread alone afterwards.
"""

from __future__ import annotations

import gc
import threading
import weakref
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred, inlineCallbacks
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall, deferLater
from twisted.trial import unittest

from socks5twist import codec
from socks5twist.client import SOCKS5ClientEndpoint, errors
from socks5twist.client.protection import GSSAPISettings
from socks5twist.codec import Command
from socks5twist.gsswire import Protection

from .fakegss import FakeGSSFailure, FakeInitiator
from .test_client_endpoint import BOUND, SUCCESS, FakeProxy, Recorder
from .test_client_gssapi import DEST, msg, sealed

REACTOR_THREAD = threading.get_ident()
REQUEST_BIND = codec.build_request(Command.BIND, DEST)


class BlockingInitiator(FakeInitiator):
    """A fake whose first step waits for C{gate}; records each step's thread."""

    def __init__(self, target: str, gate: threading.Event, **fake: Any) -> None:
        super().__init__(target, **fake)
        self.gate = gate
        self.threads: list[int] = []
        self.returned = threading.Event()  # the first step is over

    def step(self, token: bytes | None) -> bytes | None:
        self.threads.append(threading.get_ident())
        if token is not None:
            return super().step(token)
        try:
            if not self.gate.wait(10):
                raise FakeGSSFailure("the test never released the first step")
            return super().step(token)
        finally:
            self.returned.set()


def until(condition: Callable[[], bool], what: str, seconds: float = 5.0) -> Deferred[None]:
    """Fires once C{condition()} holds, polling the reactor; fails after C{seconds}."""

    @inlineCallbacks
    def poll() -> Any:
        for _ in range(int(seconds / 0.01)):
            if condition():
                return
            yield deferLater(reactor, 0.01, lambda: None)
        raise AssertionError(f"waited {seconds} s for {what}")

    return poll()


def fired(d: Deferred[Any]) -> Callable[[], bool]:
    return lambda: d.called


class ThreadedFirstStepTests(unittest.TestCase):
    timeout = 30

    def setUp(self) -> None:
        self.gate = threading.Event()
        self.addCleanup(self.gate.set)  # never leave a pool thread blocked
        self.proxy = FakeProxy()
        self.recorder = Recorder()
        self.initiators: list[BlockingInitiator] = []

    def settings(self, **fake: Any) -> GSSAPISettings:
        def make(target: str) -> BlockingInitiator:
            initiator = BlockingInitiator(target, self.gate, **fake)
            self.initiators.append(initiator)
            return initiator

        return GSSAPISettings(
            "rcmd@proxy.test", Protection.CONFIDENTIALITY, initiator=make, in_thread=True
        )

    def endpoint(self, timeout: float | None = 10, **fake: Any) -> SOCKS5ClientEndpoint:
        return SOCKS5ClientEndpoint(
            self.proxy,
            "example.org",
            443,
            timeout=timeout,
            reactor=reactor,
            gssapi=self.settings(**fake),
        )

    def factory(self) -> Factory:
        return Factory.forProtocol(lambda: self.recorder)

    @inlineCallbacks
    def blocked(self) -> Any:
        """Waits until the first step is blocked in its thread; the reactor runs meanwhile."""
        yield until(lambda: bool(self.initiators and self.initiators[0].threads), "the first step")
        ticks: list[int] = []
        loop = LoopingCall(lambda: ticks.append(1))
        loop.start(0.01)
        try:
            yield until(lambda: len(ticks) >= 10, "the reactor to tick while the step waits")
        finally:
            loop.stop()
        self.assertFalse(self.initiators[0].returned.is_set())
        self.assertEqual(self.proxy.attempts, [])  # nothing is connected before the step

    @inlineCallbacks
    def released_late(self) -> Any:
        """Releases the step after the attempt was given up: its result goes nowhere."""
        initiator = self.initiators[0]
        gone = weakref.ref(initiator)
        self.gate.set()
        yield until(initiator.returned.is_set, "the step to return")
        yield deferLater(reactor, 0.05, lambda: None)  # the thread's result reached the reactor
        self.assertEqual(self.proxy.attempts, [])
        del initiator
        self.initiators.clear()
        gc.collect()
        self.assertIsNone(gone(), "the late context is still referenced")

    @inlineCallbacks
    def test_the_first_step_waits_in_a_thread_and_the_reactor_keeps_running(self) -> Any:
        d = self.endpoint().connect(self.factory())
        yield self.blocked()
        self.assertNoResult(d)
        self.gate.set()
        yield until(lambda: bool(self.proxy.attempts), "the connection to the proxy")
        protocol, transport = self.proxy.complete()
        self.assertEqual(transport.value(), b"\x05\x01\x01")
        transport.clear()
        protocol.dataReceived(b"\x05\x01")
        self.assertEqual(transport.value(), msg(1, b"c1"))  # the token made in the thread
        for answer in [msg(1, b"s1"), msg(2, b"W\x02"), sealed(SUCCESS)]:
            protocol.dataReceived(answer)
        self.assertIs(self.successResultOf(d), self.recorder)
        [initiator] = self.initiators
        self.assertNotEqual(initiator.threads[0], REACTOR_THREAD)
        self.assertEqual(initiator.threads[1:], [REACTOR_THREAD])  # the later steps
        self.assertEqual(initiator.received, [None, b"s1"])

    @inlineCallbacks
    def test_bind_waits_for_the_first_step_too(self) -> Any:
        listens: list[object] = []
        d = self.endpoint().bind(self.factory(), listens.append)
        yield self.blocked()
        self.gate.set()
        yield until(lambda: bool(self.proxy.attempts), "the connection to the proxy")
        protocol, transport = self.proxy.complete()
        for answer in [b"\x05\x01", msg(1, b"s1"), msg(2, b"W\x02")]:
            protocol.dataReceived(answer)
        self.assertEqual(transport.value()[-len(sealed(REQUEST_BIND)) :], sealed(REQUEST_BIND))
        protocol.dataReceived(sealed(SUCCESS))
        self.assertEqual(listens, [BOUND])
        protocol.dataReceived(sealed(SUCCESS))
        self.assertIs(self.successResultOf(d), self.recorder)

    @inlineCallbacks
    def test_cancelling_during_the_first_step_drops_its_late_result(self) -> Any:
        for start in (self.connect_, self.bind_):
            self.initiators.clear()
            self.gate.clear()
            d = start(self.endpoint())
            yield self.blocked()
            d.cancel()
            self.failureResultOf(d, CancelledError)
            yield self.released_late()

    @inlineCallbacks
    def test_the_timeout_counts_the_first_step(self) -> Any:
        for start in (self.connect_, self.bind_):
            self.initiators.clear()
            self.gate.clear()
            d = start(self.endpoint(timeout=0.3))
            yield until(lambda: bool(self.initiators), "the first step")
            yield until(fired(d), "the timeout")
            error = self.failureResultOf(d, errors.HandshakeTimeout).value
            self.assertEqual(
                str(error),
                "timed out after 0.3 s waiting for GSSAPI's first context step (the KDC)"
                " for example.org:443",
            )
            self.assertFalse(self.initiators[0].returned.is_set())
            yield self.released_late()

    @inlineCallbacks
    def test_a_failed_first_step_fails_without_connecting(self) -> Any:
        self.gate.set()
        for start in (self.connect_, self.bind_):
            d = start(self.endpoint(fail="No Kerberos credentials available\n\x1b[31m"))
            yield until(fired(d), "the failure")
            error = self.failureResultOf(d, errors.GSSAPIError).value
            self.assertIn("No Kerberos credentials available", str(error))
            self.assertTrue(str(error).isprintable(), str(error))
            self.assertEqual(self.proxy.attempts, [])

    def connect_(self, endpoint: SOCKS5ClientEndpoint) -> Deferred[Any]:
        return endpoint.connect(self.factory())

    def bind_(self, endpoint: SOCKS5ClientEndpoint) -> Deferred[Any]:
        return endpoint.bind(self.factory(), lambda address: None)


class WhichPathTests(unittest.TestCase):
    def test_only_the_real_initiator_goes_to_a_thread_by_default(self) -> None:
        self.assertTrue(GSSAPISettings("rcmd@proxy.test").threaded)
        fake = GSSAPISettings("rcmd@proxy.test", initiator=FakeInitiator)
        self.assertFalse(fake.threaded)
        self.assertFalse(GSSAPISettings("rcmd@proxy.test", in_thread=False).threaded)

    def test_a_fake_initiator_is_made_in_the_reactor_thread_when_gssapi_is_selected(
        self,
    ) -> None:
        made: list[tuple[int, FakeInitiator]] = []

        def make(target: str) -> FakeInitiator:
            made.append((threading.get_ident(), FakeInitiator(target)))
            return made[-1][1]

        proxy = FakeProxy()
        settings = GSSAPISettings("rcmd@proxy.test", initiator=make)
        endpoint = SOCKS5ClientEndpoint(
            proxy, "example.org", 443, "u", "p", reactor=reactor, gssapi=settings
        )
        for choice in (b"\x05\x02", b"\x05\x01"):
            d = endpoint.connect(Factory.forProtocol(Recorder))
            protocol, transport = proxy.complete()  # connected at once: nothing prepared
            transport.clear()
            protocol.dataReceived(choice)
            d.cancel()
            self.failureResultOf(d, CancelledError)
        self.assertEqual(transport.value(), msg(1, b"c1"))  # at once, when GSSAPI was chosen
        self.assertEqual([thread for thread, _ in made], [REACTOR_THREAD])  # not for a password
