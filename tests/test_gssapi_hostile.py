"""
The server's GSSAPI (RFC 1961) against a hostile client that holds a good
ticket: what it can make the server keep, or accept, with messages that are
valid but replayed.  Same harness as L{tests.test_gssapi}: the real
C{twistd -n socks5 --gssapi} over a real MIT KDC.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from pathlib import Path
from typing import Any

from .conftest import require_module
from .kerberos import Realm

require_module("gssapi")
# (Imported after the check: the modules need python-gssapi.)
from .rfc1961 import CONFIDENTIALITY  # noqa: E402
from .test_gssapi import alice, gss_server, negotiated, wait_session_line  # noqa: E402

__all__ = ["alice", "gss_server"]  # the fixtures


def rss_kib(pid: int) -> int:
    """The resident memory of process C{pid}, in KiB (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def test_replayed_sealed_datagrams_cost_no_memory(
    gss_server: Any, kerberos_realm: Realm, alice: Path
) -> None:
    """
    A datagram of the association, sealed, sent again and again from the
    client's own address: each copy is dropped as a replay, and none of
    them stays in the server's memory.  (python-gssapi's C{unwrap} does not
    free the plaintext MIT hands back with a replay's status: 60 KB a copy.)
    """
    server = gss_server()
    client = negotiated(server, kerberos_realm, alice, CONFIDENTIALITY)
    copies = 1500
    with (
        kerberos_realm.environ(alice),
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink,
    ):
        sink.bind(("127.0.0.1", 0))
        udp.bind(("127.0.0.1", 0))
        udp.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        port = udp.getsockname()[1]
        client.send(b"\x05\x03\x00\x01" + socket.inet_aton("127.0.0.1") + struct.pack("!H", port))
        reply = client.recv(10)
        assert reply[1] == 0, reply.hex()
        relay = (socket.inet_ntoa(reply[4:8]), struct.unpack("!H", reply[8:10])[0])
        host, sink_port = sink.getsockname()
        header = b"\x00\x00\x00\x01" + socket.inet_aton(host) + struct.pack("!H", sink_port)
        datagram = client.wrap_datagram(header + os.urandom(60000))
        udp.sendto(datagram, relay)
        sink.settimeout(5)
        assert len(sink.recv(65535)) == 60000, "the first copy is relayed"
        before = rss_kib(server.process.pid)
        for i in range(copies):
            udp.sendto(datagram, relay)
            if i % 4 == 3:
                time.sleep(0.002)  # the server's socket buffer holds a few only
        time.sleep(1)
        after = rss_kib(server.process.pid)
    client.close()
    [line] = wait_session_line(server)
    dropped = int(line.split("dropped=protection:")[1].split()[0].split(",")[0])
    assert dropped > copies // 2, line
    assert after - before < 8 * 1024, f"{after - before} KiB more after {dropped} replays"
