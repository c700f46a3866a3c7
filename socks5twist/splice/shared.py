"""
What the splice relays of one reactor share (L{ReactorState}: the lock
between the reactor's thread and the relay thread, the schedulers on the
reactor, the relay thread), and the registry that finds it per reactor
(L{state_for}) without outliving the reactor.
"""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING, Any

from .poller import ReactorInterest, SharedPoller
from .thread import RelayThread, ThreadState

if TYPE_CHECKING:
    from .relay import SpliceRelay


class ReactorState:
    """
    What the splice relays of one reactor share: the lock between the
    reactor's thread and the relay thread, the two schedulers on the
    reactor, and the relay thread (while there is one).

    Kept in L{_states} by a weak reference to the reactor, and holding the
    reactor only weakly itself, so an entry goes when its reactor does.
    When the reactor shuts down, its relay thread is stopped and joined,
    and the state is marked C{shut}: no relay thread starts after that (the
    reactor may still turn once, and nothing would stop or join a thread
    started then), so a tunnel that would move stays on the reactor.  The
    entry stays too, shut: another in its place would start a thread and
    wait for a shutdown that has already happened.
    """

    __slots__ = ("direct", "ending", "lock", "poller", "shut", "thread")

    def __init__(self, reactor: Any) -> None:
        ref = weakref.ref(reactor)
        # Guards what both threads touch (the ownership protocol in
        # socks5twist.splice): each RelayThread's state, relays, _inbox,
        # _outbox and _posted, and every Pump's moved; nothing else.
        self.lock = threading.Lock()
        self.direct = ReactorInterest(ref)
        self.poller = SharedPoller(ref)
        # The reactor thread's (thread set under the lock):
        self.thread: RelayThread | None = None
        self.ending: list[RelayThread] = []  # earlier threads, maybe still ending
        self.shut = False
        reactor.addSystemEventTrigger("during", "shutdown", self._shutdown)

    def enter(self, relay: SpliceRelay) -> None:
        """
        Hand C{relay} to the relay thread (started if none is running), in
        one step under the lock: counted in the thread's C{relays}, its
        C{thread} and C{scheduler} set, and its first step queued.  So the
        thread, even one ending at that moment, sees a tunnel either not
        handed to it at all or handed over whole.
        """
        assert not self.shut
        with self.lock:
            thread = self.thread
            if thread is None or thread.state is not ThreadState.RUNNING:
                if thread is not None:
                    self.ending = [t for t in self.ending if t.alive]
                    self.ending.append(thread)
                thread = self.thread = RelayThread(relay.reactor, self.lock)
            thread.relays.add(relay)
            relay.thread = thread
            relay.scheduler = thread
            thread.queue(relay.resume)

    def _shutdown(self) -> None:
        # In the "during" phase: a server's graceful stop has had its "before".
        self.shut = True
        # Every thread started here, joined (the ones that ended long ago at once).
        for thread in [*self.ending, *([self.thread] if self.thread else [])]:
            thread.stop()
        self.ending = []


# Per reactor, without keeping any reactor alive (an id() could be reused).
_states: weakref.WeakKeyDictionary[Any, ReactorState] = weakref.WeakKeyDictionary()
_states_lock = threading.Lock()  # guards _states (a reactor per thread is allowed)


def state_for(reactor: Any) -> ReactorState:
    """The splice relays' shared state for C{reactor} (made on first use)."""
    with _states_lock:
        state = _states.get(reactor)
        if state is None:
            state = _states[reactor] = ReactorState(reactor)
        return state
