"""
The server's GSSAPI (RFC 1961) against a hostile client that holds a good
ticket: what it can make the server keep, or accept, with messages that are
valid but replayed.  Same harness as L{tests.test_gssapi}: the real
C{twistd -n socks5 --gssapi} over a real MIT KDC.
"""

from __future__ import annotations

import os
import socket
import ssl
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import free_port, require_module
from .kerberos import Realm

require_module("gssapi")
# (Imported after the check: the modules need python-gssapi.)
from .rfc1961 import CONFIDENTIALITY, INTEGRITY, Client, Closed  # noqa: E402
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


@pytest.fixture
def sends_then_eof() -> Iterator[tuple[tuple[str, int], bytes]]:
    """A destination that sends 100 KB and half-closes; its address and the bytes."""
    payload = os.urandom(100_000)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)

    def serve() -> None:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        with conn:
            conn.sendall(payload)
            conn.shutdown(socket.SHUT_WR)
            conn.settimeout(10)
            while conn.recv(65536):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname(), payload
    listener.close()
    thread.join(15)


def test_a_tls_listener_closes_a_wrapped_tunnel_whole(
    start_server: Any,
    kerberos_realm: Realm,
    alice: Path,
    tmp_path: Path,
    sends_then_eof: tuple[tuple[str, int], bytes],
) -> None:
    """
    Over an C{ssl:} listener a session cannot half-close (TLS has no
    half-close here): when the destination sends EOF, the wrapped tunnel
    closes whole after the last message, with no traceback in the log.
    """
    require_module("OpenSSL")
    from .tlscerts import Authority

    issued = Authority(tmp_path / "pki").issue("proxy", "localhost")
    port = free_port()
    server = start_server(
        "--port",
        f"ssl:{port}:interface=127.0.0.1:privateKey={issued.key}:certKey={issued.cert}",
        "--gssapi",
        f"--gssapi-keytab={kerberos_realm.keytab_path}",
        "--gssapi-protection=integrity",
        connect_to=("127.0.0.1", port),
        env=kerberos_realm.env,
    )
    tls = ssl.create_default_context()
    tls.check_hostname = False
    tls.verify_mode = ssl.CERT_NONE
    destination, payload = sends_then_eof
    with kerberos_realm.environ(alice):
        client = Client(server.address, tls=tls)
        assert client.greet() == 1
        client.establish()
        assert client.ask_level(INTEGRITY) == INTEGRITY
        assert client.connect(*destination)[1] == 0
        assert client.recv(len(payload)) == payload
        with pytest.raises(Closed):
            client.recv(1)
    client.close()
    [line] = wait_session_line(server)
    assert f"up=0 down={len(payload)} " in line, line
