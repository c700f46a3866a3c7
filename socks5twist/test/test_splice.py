"""
The splice relay's thread, on the real reactor: tunnels move their bytes in
the relay thread without the reactor watching their sockets, end cleanly
both ways, hand their transports back to the reactor thread, and are ended
in the reactor's thread when the relay thread stops.  (The relay's flow
control, half-close and fallback are tested end to end in
tests/test_server.py.)
"""

from __future__ import annotations

import gc
import os
import select
import socket
import threading
import weakref
from typing import Any, cast

from twisted.internet import defer, error, reactor
from twisted.internet.task import deferLater
from twisted.internet.testing import MemoryReactor
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from socks5twist import splice
from socks5twist.splice import shared as splice_shared
from socks5twist.splice.poller import SharedPoller
from socks5twist.splice.pump import End, Pump
from socks5twist.splice.shared import state_for
from socks5twist.splice.thread import RelayThread, ThreadState

from .splicing import make_tunnels, read, start, until


class RelayThreadTests(TestCase):
    if not splice.available():
        skip = "no splice(2) on this platform"

    @defer.inlineCallbacks
    def test_bytes_flow_in_the_relay_thread_and_nothing_is_left(self) -> Any:
        direct = SharedPoller.SHARED_FROM
        tunnels = yield make_tunnels(self, direct + 2)
        readers_before = set(reactor.getReaders())
        for _, relay, _, _ in tunnels:
            relay.start()
        # A new tunnel's sockets are the reactor's (the transports no longer
        # read): the first ones' each a reader, the others' in one shared set.
        transports = {proto.transport for _, _, _, proto in tunnels}
        added = set(reactor.getReaders()) - readers_before
        self.assertEqual(transports & added, set())
        self.assertEqual(len(added), 2 * direct + 1)
        (poller,) = [r for r in added if isinstance(r, SharedPoller)]
        on_reactor = state_for(reactor).direct
        self.assertEqual(
            [r.scheduler for _, r, _, _ in tunnels], [on_reactor] * direct + [poller] * 2
        )
        for _, relay, _, _ in tunnels:
            relay.move_to_thread()
        loop = tunnels[0][1].thread
        assert loop is not None
        self.assertTrue(all(relay.thread is loop for _, relay, _, _ in tunnels))
        # The reactor no longer watches the tunnels' sockets; the relay thread does.
        self.assertEqual(set(reactor.getReaders()) - readers_before, set())
        self.assertEqual(set(reactor.getWriters()) & (transports | added), set())
        self.assertEqual(poller.fileno(), -1)  # its epoll set is closed
        self.assertEqual(poller.open, 0)
        fds = {end.fd for _, relay, _, _ in tunnels for end in (relay._client, relay._remote)}
        yield until(lambda: fds <= set(loop.ends), "the relay thread to watch the sockets")
        for index, (client, _, remote, _) in enumerate(tunnels):
            client.setblocking(False)
            self.assertEqual((yield read(client, 2)), b"hi")
            client.sendall(b"up %d" % index)
            self.assertEqual((yield read(remote, 4)), b"up %d" % index)
            remote.sendall(b"down %d" % index)
        for index, (client, _, _, _) in enumerate(tunnels):
            self.assertEqual((yield read(client, 6)), b"down %d" % index)
        for client, _, remote, _ in tunnels:
            client.shutdown(socket.SHUT_WR)
            remote.shutdown(socket.SHUT_WR)
        # Each EOF is passed on, and then both connections close.
        for client, _, remote, _ in tunnels:
            self.assertEqual((yield read(client, 1)), b"")
            self.assertEqual((yield read(remote, 1)), b"")
        protos = [proto for _, _, _, proto in tunnels]
        yield until(lambda: all(p.lost is not None for p in protos), "connectionLost")
        self.assertTrue(all(relay.finished for _, relay, _, _ in tunnels))
        self.assertEqual(fds & set(loop.ends), set())
        self.assertEqual(loop.relays, set())
        # Transports are closed in the reactor's thread, cleanly.
        for proto in protos:
            assert proto.lost is not None
            proto.lost.trap(error.ConnectionDone)
            self.assertEqual(proto.lost_in, threading.get_ident())
        self.assertEqual([relay.up for _, relay, _, _ in tunnels], [4] * (direct + 2))
        # (The reply, to_client, is not relayed data.)
        self.assertEqual([relay.down for _, relay, _, _ in tunnels], [6] * (direct + 2))

    @defer.inlineCallbacks
    def test_the_shared_set_closes_when_the_last_relay_leaves_the_reactor(self) -> Any:
        direct = SharedPoller.SHARED_FROM
        tunnels = yield make_tunnels(self, direct + 1)
        for _, relay, _, _ in tunnels:
            relay.start()
        last = tunnels[-1][1]
        poller = last.scheduler
        assert isinstance(poller, SharedPoller)
        epoll_fd = poller.fileno()
        self.assertNotEqual(epoll_fd, -1)
        # The shared tunnel ends: its set holds no socket, but relays are
        # still on the reactor, so it stays for the next tunnels.
        last.close()
        self.assertEqual(poller._ends, {})
        self.assertEqual(poller.fileno(), epoll_fd)
        self.assertIn(poller, reactor.getReaders())
        # The last relay on the reactor ends (or moves): the set goes.
        for _, relay, _, _ in tunnels[:-2]:
            relay.close()
        self.assertEqual(poller.fileno(), epoll_fd)
        tunnels[-2][1].move_to_thread()
        self.assertEqual(poller.fileno(), -1)
        self.assertNotIn(poller, reactor.getReaders())
        self.assertEqual(poller.open, 0)
        tunnels[-2][1].close()
        protos = [proto for _, _, _, proto in tunnels]
        yield until(lambda: all(p.lost is not None for p in protos), "connectionLost")

    @defer.inlineCallbacks
    def test_abort_from_the_reactor_resets_the_client(self) -> Any:
        [(client, relay, remote, proto)] = yield make_tunnels(self, 1)
        yield start(client, relay, move=True)
        relay.abort()
        yield until(lambda: proto.lost is not None, "connectionLost")
        assert proto.lost is not None
        proto.lost.trap(error.ConnectionAborted)
        self.assertEqual((yield read(remote, 1)), b"")  # the bare socket is closed
        with self.assertRaises(ConnectionResetError):
            client.recv(1)

    @defer.inlineCallbacks
    def test_stopping_the_thread_ends_open_tunnels_here(self) -> Any:
        tunnels = yield make_tunnels(self, 2)
        for _, relay, _, _ in tunnels:
            relay.start()
            relay.move_to_thread()
        loop = tunnels[0][1].thread
        assert loop is not None
        fds = {end.fd for _, relay, _, _ in tunnels for end in (relay._client, relay._remote)}
        yield until(lambda: fds <= set(loop.ends), "the relay thread to watch the sockets")
        loop.stop()
        # Joined, and everything ended synchronously, in this thread.
        self.assertFalse(loop._thread.is_alive())
        self.assertEqual(loop.ends, {})
        self.assertEqual(loop.relays, set())
        for _, relay, remote, proto in tunnels:
            self.assertTrue(relay.finished)
            assert proto.lost is not None
            proto.lost.trap(error.ConnectionAborted)
            self.assertEqual(proto.lost_in, threading.get_ident())
            self.assertEqual((yield read(remote, 1)), b"")
        # The next tunnel gets a new relay thread.
        [(client, relay, remote, proto)] = yield make_tunnels(self, 1)
        yield start(client, relay, move=True)
        assert relay.thread is not None
        self.assertIsNot(relay.thread, loop)
        self.assertTrue(relay.thread.running)
        client.sendall(b"ping")
        self.assertEqual((yield read(remote, 4)), b"ping")
        relay.close()
        yield until(lambda: proto.lost is not None, "connectionLost")

    @defer.inlineCallbacks
    def test_the_thread_ends_when_no_tunnel_is_left(self) -> Any:
        self.patch(RelayThread, "LINGER", 0.05)
        [(client, relay, _, proto)] = yield make_tunnels(self, 1)
        relay.start()
        relay.move_to_thread()
        loop = relay.thread
        assert loop is not None
        relay.close()
        yield until(lambda: proto.lost is not None, "connectionLost")
        yield until(lambda: not loop._thread.is_alive(), "the relay thread to end")
        self.assertFalse(loop.running)
        with self.assertRaises(ValueError):
            loop._epoll.fileno()  # closed
        [(client, relay, _, proto)] = yield make_tunnels(self, 1)
        yield start(client, relay, move=True)
        self.assertIsNot(relay.thread, loop)
        relay.close()
        yield until(lambda: proto.lost is not None, "connectionLost")

    @defer.inlineCallbacks
    def test_a_tunnel_moves_to_the_thread_after_some_reads(self) -> Any:
        [(client, relay, remote, proto)] = yield make_tunnels(self, 1)
        yield start(client, relay, move=False)
        for index in range(splice.MOVE_AFTER // 2):  # a round trip is two reads
            self.assertIsNone(relay.thread)
            client.sendall(b"%03d" % index)
            self.assertEqual((yield read(remote, 3)), b"%03d" % index)
            remote.sendall(b"ok")
            self.assertEqual((yield read(client, 2)), b"ok")
        self.assertIsNotNone(relay.thread)
        self.assertNotIn(relay._client, reactor.getReaders())
        client.sendall(b"after")
        self.assertEqual((yield read(remote, 5)), b"after")
        relay.close()
        yield until(lambda: proto.lost is not None, "connectionLost")

    @defer.inlineCallbacks
    def test_in_the_reactor_an_abort_is_immediate(self) -> Any:
        [(client, relay, remote, proto)] = yield make_tunnels(self, 1)
        yield start(client, relay, move=False)
        relay.abort()
        self.assertTrue(relay.finished)
        assert proto.lost is not None
        proto.lost.trap(error.ConnectionAborted)
        self.assertNotIn(relay._client, reactor.getReaders())
        self.assertEqual((yield read(remote, 1)), b"")
        with self.assertRaises(ConnectionResetError):
            client.recv(1)

    @defer.inlineCallbacks
    def test_a_move_during_a_read_skips_the_write_of_the_same_event(self) -> Any:
        """
        The reactor calls doWrite right after doRead when an event says
        readable and writable; if that read moved the tunnel, the socket is
        the relay thread's, and the reactor thread must not write to it.
        """
        writers: list[int] = []
        do_write = End.do_write

        def recording(end: Any) -> None:
            writers.append(threading.get_ident())
            do_write(end)

        self.patch(End, "do_write", recording)
        [(client, relay, remote, proto)] = yield make_tunnels(self, 1)
        yield start(client, relay, move=False)
        relay.reads = splice.MOVE_AFTER - 1
        client.sendall(b"x")  # on loopback, readable as sendall returns
        end = relay._client
        reactor._doReadOrWrite(end, end.fd, select.EPOLLIN | select.EPOLLOUT)  # type: ignore[attr-defined]
        self.assertIsNotNone(relay.thread)
        self.assertNotIn(threading.get_ident(), writers)
        self.assertEqual((yield read(remote, 1)), b"x")
        relay.close()
        yield until(lambda: proto.lost is not None, "connectionLost")

    @defer.inlineCallbacks
    def test_an_error_in_one_tunnel_ends_it_and_the_thread_goes_on(self) -> Any:
        tunnels = yield make_tunnels(self, 2)
        for client, relay, _, _ in tunnels:
            yield start(client, relay, move=True)
        (bad_client, bad, _, bad_proto), (client, good, remote, proto) = tunnels
        copy = Pump.copy

        def failing(pump: Any) -> None:
            if pump.relay is bad:
                raise RuntimeError("a bug in a pump")
            copy(pump)

        self.patch(Pump, "copy", failing)
        bad_client.sendall(b"boom")
        yield until(lambda: bad_proto.lost is not None, "the failed tunnel to end")
        assert bad_proto.lost is not None
        bad_proto.lost.trap(error.ConnectionAborted)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        client.sendall(b"still")
        self.assertEqual((yield read(remote, 5)), b"still")
        self.assertTrue(good.thread is not None and good.thread._thread.is_alive())
        good.close()
        yield until(lambda: proto.lost is not None, "connectionLost")

    @defer.inlineCallbacks
    def test_a_join_that_times_out_leaves_the_threads_tunnels_alone(self) -> Any:
        """
        At shutdown the reactor joins the relay thread; if the thread has not
        ended in time, its tunnels are still its own: the reactor closes
        nothing of theirs and says so, and the thread ends them when it can.
        """
        self.patch(RelayThread, "JOIN_TIMEOUT", 0.05)
        seen: list[LogEvent] = []
        observer = cast(ILogObserver, seen.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        [(client, relay, remote, proto)] = yield make_tunnels(self, 1)
        yield start(client, relay, move=True)
        relay_thread = relay.thread
        assert relay_thread is not None
        # The thread is stuck in a step (bounded, for the test's sake).
        entered, gate = threading.Event(), threading.Event()
        self.addCleanup(gate.set)

        def stuck() -> None:
            entered.set()
            gate.wait(10)

        relay_thread.call(stuck)
        self.assertTrue(entered.wait(5))
        relay_thread.stop()
        self.assertTrue(relay_thread._thread.is_alive())
        self.assertEqual(relay_thread.state, ThreadState.ABANDONED)
        warnings = [formatEvent(e) for e in seen if "did not stop" in formatEvent(e)]
        self.assertEqual(len(warnings), 1, warnings)
        # Nothing of the tunnel's was closed from here.
        self.assertIsNone(proto.lost)
        os.fstat(relay._client.fd)
        with self.assertRaises(BlockingIOError):
            remote.recv(1)  # (the relay's bare socket is still open)
        # Once unstuck, the thread ends the tunnel itself and hands it back.
        gate.set()
        yield until(lambda: not relay_thread._thread.is_alive(), "the relay thread to end")
        yield until(lambda: proto.lost is not None, "connectionLost")
        assert proto.lost is not None
        proto.lost.trap(error.ConnectionAborted)
        self.assertEqual(proto.lost_in, threading.get_ident())
        self.assertEqual((yield read(remote, 1)), b"")

    @defer.inlineCallbacks
    def test_an_idle_tunnel_in_the_thread_is_ended_by_its_owner(self) -> Any:
        """
        The idle timer is the reactor's, the verdict the relay thread's:
        bytes keep the tunnel open; silence ends it, and the session hears
        of the timeout before connectionLost, in the reactor thread.
        """
        calls: list[tuple[str, int]] = []

        def on_idle() -> None:
            calls.append(("idle", threading.get_ident()))

        [(client, relay, remote, proto)] = yield make_tunnels(
            self, 1, idle_timeout=0.5, on_idle=on_idle
        )
        yield start(client, relay, move=True)
        for _ in range(12):  # 1.2 s of traffic, a byte every 0.1 s
            client.sendall(b".")
            self.assertEqual((yield read(remote, 1)), b".")
            yield deferLater(reactor, 0.1, lambda: None)
        self.assertIsNone(proto.lost)
        self.assertEqual(calls, [])
        yield until(lambda: proto.lost is not None, "the idle timeout")
        self.assertEqual(calls, [("idle", threading.get_ident())])
        assert proto.lost is not None
        proto.lost.trap(error.ConnectionDone)
        self.assertEqual((yield read(remote, 1)), b"")


class ReactorStateTests(TestCase):
    """What the splice relays of a reactor share lives no longer than the reactor."""

    def test_the_state_goes_with_its_reactor(self) -> None:
        before = len(splice_shared._states)
        fake = MemoryReactor()
        state = state_for(fake)
        self.assertIs(state_for(fake), state)
        self.assertEqual(len(splice_shared._states), before + 1)
        gone = weakref.ref(fake)
        del fake, state
        gc.collect()
        self.assertIsNone(gone())
        self.assertEqual(len(splice_shared._states), before)
