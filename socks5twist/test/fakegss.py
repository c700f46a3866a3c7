"""
A fake GSSAPI initiator for the client's tests (no KDC, no C{gssapi}
package): the same methods as L{socks5twist.gss.Initiator}, with tokens
anyone can read.

Its context tokens are C{c1}, C{c2}, ...; it takes the server's tokens
C{s1}, C{s2}, ... and is complete after C{rounds} of them.  A wrapped level
is C{W} and the level byte; a protected message is C{P} and the data, in
chunks of at most C{chunk} bytes; anything else fails to unwrap.
"""

from __future__ import annotations

from socks5twist.gsswire import Protection


class FakeGSSFailure(Exception):
    """What the fake raises where python-gssapi would (its text is the reason)."""


class FakeProtector:
    def __init__(self, level: Protection, chunk: int = 1000) -> None:
        self.level = level
        self.chunk = chunk

    def wrap(self, data: bytes) -> list[bytes]:
        return [b"P" + data[i : i + self.chunk] for i in range(0, len(data), self.chunk)]

    def unwrap(self, token: bytes) -> bytes:
        if not token.startswith(b"P"):
            raise FakeGSSFailure(f"bad MIC on {token[:8]!r}")
        return token[1:]


class FakeInitiator:
    def __init__(self, target: str, rounds: int = 1, fail: str | None = None) -> None:
        self.target = target
        self.rounds = rounds
        self.fail = fail  # raise this at the first step (no ticket, say)
        self.received: list[bytes | None] = []
        self.levels: list[tuple[Protection, bool]] = []
        self.complete = False

    def step(self, token: bytes | None) -> bytes | None:
        if self.fail is not None:
            raise FakeGSSFailure(self.fail)
        self.received.append(token)
        if token is None:
            return b"c1"
        if token != f"s{len(self.received) - 1}".encode():
            raise FakeGSSFailure(f"defective token {token[:16]!r}")
        if len(self.received) - 1 >= self.rounds:
            self.complete = True
            return None
        return f"c{len(self.received)}".encode()

    def level_request(self, level: Protection, nec: bool) -> bytes:
        self.levels.append((level, nec))
        return bytes((level,)) if nec else b"W" + bytes((level,))

    def level_answer(self, token: bytes, nec: bool) -> int:
        if nec:
            if len(token) != 1:
                raise FakeGSSFailure(f"an unwrapped protection level of {len(token)} bytes")
            return token[0]
        if len(token) != 2 or token[:1] != b"W":
            raise FakeGSSFailure("the level does not unwrap")
        return token[1]

    def protector(self, level: Protection) -> FakeProtector:
        return FakeProtector(level)
