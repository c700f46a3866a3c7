"""
The zero-copy relay (Linux): once a tunnel is open, bytes move from socket to
pipe to socket with C{splice(2)} and never enter Python; on the reactor at
first, then, once a tunnel has made a few round trips, in a thread of the
relay's own.

Used only when the client's end is a plain TCP transport of Twisted's own
(no TLS, no PROXY-protocol wrapper) with nothing left in its write buffer,
and the other end is one too (a BIND peer) or a bare connected socket (a
CONNECT destination: see L{socks5twist.socketconnect.connect_socket}); every
other tunnel uses L{socks5twist.relay.StreamRelay}.

The modules, one concern each:

  - L{pump <socks5twist.splice.pump>}: the data path, a tunnel's two
    sockets (C{End}) and two directions (C{Pump}), which know nothing of
    threads;
  - L{poller <socks5twist.splice.poller>}: the schedulers on the reactor,
    its own reader and writer sets or one shared nested C{epoll} set;
  - L{thread <socks5twist.splice.thread>}: the relay thread, its C{epoll}
    set, its two queues and its life (linger, stop, the checked join);
  - L{relay <socks5twist.splice.relay>}: L{SpliceRelay} as the session sees
    it, L{can_splice}, L{available};
  - L{shared <socks5twist.splice.shared>}: what one reactor's relays share
    (the lock, the schedulers, the relay thread), found per reactor.

Three schedulers, and why each earns its place (measured: README, "The
relay"): a tunnel's sockets start as the reactor's own readers and writers,
the cheapest path for the few round trips most sessions are; while four or
more tunnels are on the reactor, new ones share one nested C{epoll} set that
the reactor watches as one reader (about 10 % of the sessions per second at
concurrency 32); after four round trips a tunnel moves to the relay thread,
which dispatches its events without the reactor's per-event overhead (1-byte
round-trip latency p50 from about 117 to about 81 µs).

Ownership protocol
==================

A tunnel has one owner at a time, and only the owner touches its sockets'
descriptors and interest (C{End}), its pipes, its bare socket and its pumps
(C{Pump}, but for C{moved}), and the relay's C{finished}, C{idled},
C{drained} and C{active_at}:

  1. From L{SpliceRelay.__init__} the owner is the reactor thread, and the
     scheduler of the tunnel is the reactor (directly, or through the shared
     poller, which lives in the reactor thread only).
  2. Reactor → thread (L{SpliceRelay.move_to_thread}, in the reactor
     thread): the reactor stops watching both sockets, then, in one step
     under the lock (L{ReactorState.enter
     <socks5twist.splice.shared.ReactorState.enter>}), counts the tunnel in
     the thread's C{relays}, sets the relay's C{thread} and C{scheduler}
     (never changed again, so the thread may read them) and queues a step
     that makes the thread watch the same interest.  From that step on, the
     thread is the owner; a thread that ends at that moment sees the tunnel
     handed over whole, or not at all.  The reactor reads nothing of the
     owner's once C{thread} is set (it checks C{thread} before C{finished}),
     and skips any event of the same turn (C{write_on_reactor} checks
     C{thread}).  Once the reactor has shut down, no tunnel moves.
  3. While the thread owns the tunnel, the reactor asks for things only by
     queueing steps (L{RelayThread.call}: close, abort, a lost side, the
     idle check); the thread answers only through C{callFromThread} (logs,
     the idle timer's new delay) and L{RelayThread.hand_back}.
  4. Thread → reactor (L{RelayThread.hand_back}): the owner ends the tunnel
     (C{_release}: drops the sockets from its set, closes the pipes and the
     bare socket, sets C{finished}), then queues the relay in the outbox
     under the lock; the reactor takes it out under the lock
     (L{RelayThread.give_back}) and is the owner again, to close the
     transports (L{SpliceRelay.finish_on_reactor}).  A tunnel on the reactor
     ends the same way without the queue.
  5. The reactor thread alone touches the transports, the relay's C{reads},
     C{_lost}, C{_idle_call}, C{_throttle_calls} and C{_handed_back}, the
     shared poller, and the registry of per-reactor state (under its own
     small lock).
  6. A direction under a C{[[limit]]}'s bandwidth (C{Pump.budget}) that is in
     debt stops reading its source and sets a timer of its owner's
     (L{SpliceRelay.later}): the reactor's C{callLater}, or the relay
     thread's own timers (its C{epoll} wait is bounded by the next one),
     which only the thread touches.  A reactor timer that fires once the
     tunnel has moved passes its step on by L{RelayThread.call}, like any
     other request.  The drain deadline's checks are such timers too
     (L{Pump.check_drain <socks5twist.splice.pump.Pump.check_drain>}, from
     a source's EOF on); a check that fires after its tunnel has ended does
     nothing, and the relay thread drops the timers it still holds once it
     holds no tunnel (they can only be ended tunnels'), so they never keep
     an idle thread from lingering out.  The budgets and their buckets,
     shared by tunnels in both threads, are under the lock of their
     L{Shaper <socks5twist.shaping.Shaper>}, not this one.

What both threads touch goes through one lock per reactor
(C{ReactorState.lock}), which guards exactly: each relay thread's C{state},
C{relays}, C{_inbox}, C{_outbox} and C{_posted}, and every C{Pump.moved}
(the session and the metrics read the byte counts of a live tunnel).  The
idle timeout is split along the same line: the timer is the reactor's, the
verdict (how long since the last byte) the owner's, reached through the
queue.

The relay thread ends the tunnels it still holds itself before it ends
(on a stop, or on a bug in its loop), so the reactor never touches a
descriptor of the thread's unless the thread has been joined; a join that
times out leaves them alone.  At shutdown the reactor joins every relay
thread it started that may still be running (one ending already too, so
the transports it hands back are closed before the reactor stops), and
starts none after that.  Per-reactor state is held by a weak reference to
the reactor, so it goes with the reactor: nothing is keyed by C{id()}.
"""

from .pump import COPY_SIZE, PIPE_SIZE
from .relay import MOVE_AFTER, SpliceRelay, available, can_splice

__all__ = ["COPY_SIZE", "MOVE_AFTER", "PIPE_SIZE", "SpliceRelay", "available", "can_splice"]
