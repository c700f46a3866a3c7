"""
Log lines about refusals that a client can repeat as fast as it can connect.

A refused connection costs a client nothing, so a line per refusal would let
any client flood the log (and the disk).  L{BurstLog} writes the first
refusal of a kind (per key, such as the client's address) at once, counts the
ones that follow within C{window} seconds, and then writes one line saying how
many more there were.  Nothing is lost, and a flood costs a line per window.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from twisted.logger import Logger

__all__ = ["BurstLog"]

# Keys followed at once: past this, new keys share one count ("others").
MAX_KEYS = 1024
_OTHERS = object()


class BurstLog:
    """
    One log line per burst of the same refusal.

    @param log: the logger to write to (its C{warn} level).
    @param window: seconds after the first line of a burst during which
        repeats are counted, not written.
    """

    def __init__(self, reactor: Any, log: Logger, window: float = 10.0) -> None:
        self._reactor = reactor
        self._log = log
        self.window = window
        # key -> [repeats since the first line, that line's text]
        self._bursts: dict[object, list[Any]] = {}

    def refused(self, key: Hashable, format: str, **fields: object) -> None:
        """
        A refusal: written now if it starts a burst, else counted.  Every
        field that came from the network must already be escaped.
        """
        burst = self._bursts.get(key)
        if burst is None and len(self._bursts) >= MAX_KEYS:
            key, burst = _OTHERS, self._bursts.get(_OTHERS)
            if burst is None:
                burst = self._bursts[_OTHERS] = [0, "refusals of other clients and kinds"]
                self._reactor.callLater(self.window, self._end, _OTHERS)
        if burst is not None:
            burst[0] += 1
            return
        self._bursts[key] = [0, format.format(**fields)]
        self._log.warn(format, **fields)
        self._reactor.callLater(self.window, self._end, key)

    def _end(self, key: object) -> None:
        repeats, text = self._bursts.pop(key)
        if repeats:
            self._log.warn(
                "{repeats} more in the last {window:g} s like: {text}",
                repeats=repeats,
                window=self.window,
                text=text,
            )

    @property
    def open_bursts(self) -> int:
        """How many kinds of refusal are being counted now."""
        return len(self._bursts)
