"""
The server's GSSAPI (RFC 1961) end to end: the real C{twistd -n socks5
--gssapi} over a real MIT KDC (L{tests.kerberos}), driven by an RFC 1961
client written on python-gssapi alone (L{tests.rfc1961}), and by the
project's own client endpoint.

Each protection level moves a megabyte each way intact; the principal is
the user of the rules and the logs; bad tokens, tickets, services, levels
and messages end the session with one line and no traceback.
"""

from __future__ import annotations

import hashlib
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import SocksServer, require_module, require_tool, wait_until
from .kerberos import Realm

require_module("gssapi")
# (Imported after the check: the module needs python-gssapi.)
from . import rfc1961  # noqa: E402
from .rfc1961 import CLEAR, CONFIDENTIALITY, INTEGRITY, Aborted, Client, Closed  # noqa: E402

MEGABYTE = bytes(range(256)) * 4096
LEVELS = {CLEAR: "clear", INTEGRITY: "integrity", CONFIDENTIALITY: "confidentiality"}


@pytest.fixture(scope="module")
def alice(kerberos_realm: Realm, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Alice's ticket cache."""
    return kerberos_realm.kinit("alice", tmp_path_factory.mktemp("alice") / "ccache")


@pytest.fixture(scope="module")
def bob(kerberos_realm: Realm, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return kerberos_realm.kinit("bob", tmp_path_factory.mktemp("bob") / "ccache")


@pytest.fixture
def gss_server(
    start_server: Callable[..., SocksServer], kerberos_realm: Realm
) -> Callable[..., SocksServer]:
    """C{start_server} with GSSAPI on, the realm's keytab and environment."""

    def start(*args: str, levels: str = "clear,integrity,confidentiality", **kw: Any) -> Any:
        return start_server(
            "--gssapi",
            f"--gssapi-keytab={kw.pop('keytab', kerberos_realm.keytab_path)}",
            f"--gssapi-protection={levels}",
            *args,
            env=kw.pop("env", kerberos_realm.env),
            **kw,
        )

    return start


def negotiated(server: SocksServer, realm: Realm, ccache: Path, level: int) -> Client:
    """A client through the context and the level (inside the realm's environment)."""
    with realm.environ(ccache):
        client = Client(server.address)
        assert client.greet() == 1
        client.establish()
        assert client.ask_level(level) == level
    return client


def exchange_megabyte(client: Client, destination: tuple[str, int]) -> bytes:
    """CONNECT to the digest echo, a megabyte each way, then its SHA-256."""
    reply = client.connect(*destination)
    assert reply[:2] == b"\x05\x00", reply.hex()
    sender = threading.Thread(target=client.send, args=(MEGABYTE,))
    sender.start()
    echoed = client.recv(len(MEGABYTE))
    sender.join(30)
    client.sock.shutdown(socket.SHUT_WR)
    digest = client.recv(len("SHA256:") + 64)
    assert echoed == MEGABYTE
    return digest


def wait_session_line(server: SocksServer, n: int = 1) -> list[str]:
    return wait_until(
        lambda: server.session_lines() if len(server.session_lines()) >= n else None,
        10,
        "the session's line",
    )


@pytest.mark.parametrize("level", [CLEAR, INTEGRITY, CONFIDENTIALITY], ids=LEVELS.get)
def test_a_megabyte_each_way_at_each_level(
    gss_server: Any, kerberos_realm: Realm, alice: Path, echo_server: tuple[str, int], level: int
) -> None:
    server = gss_server()
    client = negotiated(server, kerberos_realm, alice, level)
    with kerberos_realm.environ(alice):
        digest = exchange_megabyte(client, echo_server)
    client.close()
    assert digest == b"SHA256:" + hashlib.sha256(MEGABYTE).hexdigest().encode()
    [line] = wait_session_line(server)
    assert " user=alice@SOCKS.TEST CONNECT " in line
    assert f"up={len(MEGABYTE)} down={len(MEGABYTE) + 71}" in line
    assert f" gssapi={LEVELS[level]} " in line
    # Clear tunnels may splice; wrapped ones need the stream relay.
    assert ("relay=stream" in line) or level == CLEAR


def test_the_server_chooses_the_level(
    gss_server: Any, kerberos_realm: Realm, alice: Path, echo_server: tuple[str, int]
) -> None:
    """Asked for clear where only confidentiality is allowed: confidentiality it is."""
    server = gss_server(levels="confidentiality")
    with kerberos_realm.environ(alice):
        client = Client(server.address)
        assert client.greet() == 1
        client.establish()
        assert client.ask_level(CLEAR) == CONFIDENTIALITY
        # recv() checks that every message came sealed.
        assert exchange_megabyte(client, echo_server).startswith(b"SHA256:")
    client.close()


def test_nec_levels_only_where_allowed(
    gss_server: Any, kerberos_realm: Realm, alice: Path, echo_server: tuple[str, int]
) -> None:
    server = gss_server()
    with kerberos_realm.environ(alice):
        client = Client(server.address)
        client.greet()
        client.establish()
        with pytest.raises(Aborted):
            client.ask_level(INTEGRITY, nec=True)
    client.close()
    wait_until(lambda: "GSSAPI protection level refused" in server.log(), 10, "the refusal")
    assert "--gssapi-nec" in server.log()

    server = gss_server("--gssapi-nec")
    with kerberos_realm.environ(alice):
        client = Client(server.address)
        client.greet()
        client.establish()
        assert client.ask_level(INTEGRITY, nec=True) == INTEGRITY
        assert exchange_megabyte(client, echo_server).startswith(b"SHA256:")
    client.close()


def test_a_principal_and_a_realm_in_the_rules(
    gss_server: Any,
    kerberos_realm: Realm,
    alice: Path,
    bob: Path,
    echo_server: tuple[str, int],
    tmp_path: Path,
) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(
        'default = "deny"\n'
        '[[rule]]\naction = "deny"\nusers = ["bob@SOCKS.TEST"]\n'
        '[[rule]]\naction = "allow"\nusers = ["@SOCKS.TEST"]\n',
        encoding="utf-8",
    )
    server = gss_server(f"--rules={rules}", "--auth=memory:carol:secret")
    # A password user is in no realm: the default denies her.
    with socket.create_connection(server.address, timeout=10) as sock:
        host, port = echo_server
        sock.sendall(b"\x05\x01\x02\x01\x05carol\x06secret")
        sock.sendall(b"\x05\x01\x00\x01" + socket.inet_aton(host) + struct.pack("!H", port))
        assert rfc1961.recv_exact(sock, 4) == b"\x05\x02\x01\x00"
        assert rfc1961.recv_exact(sock, 10)[1] == 0x02
    for ccache, expected in ((alice, 0x00), (bob, 0x02)):
        client = negotiated(server, kerberos_realm, ccache, INTEGRITY)
        with kerberos_realm.environ(ccache):
            reply = client.connect(*echo_server)
        assert reply[1] == expected, (ccache, reply.hex())
        client.close()
    lines = wait_session_line(server, 3)
    assert any("user=bob@SOCKS.TEST" in line and "reply=0x02" in line for line in lines)
    assert any("user=alice@SOCKS.TEST" in line and "reply=0x00" in line for line in lines)


def test_garbage_tokens_abort_with_one_line(gss_server: Any) -> None:
    server = gss_server()
    for token in (b"\x00" * 40, b"\x60\x82\xff\xff" + b"A" * 300, b"\x1b[2J\x1b[31mforged\n"):
        with socket.create_connection(server.address, timeout=10) as sock:
            sock.sendall(b"\x05\x01\x01")
            assert rfc1961.recv_exact(sock, 2) == b"\x05\x01"
            sock.sendall(rfc1961.frame(rfc1961.AUTH, token))
            assert rfc1961.recv_exact(sock, 2) == b"\x01\xff"
            assert sock.recv(10) == b"", "closed after the abort"
    wait_until(
        lambda: server.log().count("GSSAPI authentication failed for") == 3, 10, "three lines"
    )
    assert "\x1b" not in server.log()


def test_an_expired_ticket(
    gss_server: Any, kerberos_realm: Realm, tmp_path: Path, echo_server: tuple[str, int]
) -> None:
    """A token made while the ticket was good, sent after it expired (and the skew)."""
    conf = tmp_path / "krb5.conf"
    text = Path(kerberos_realm.env["KRB5_CONFIG"]).read_text()
    conf.write_text(text.replace("[libdefaults]\n", "[libdefaults]\n clockskew = 1\n", 1))
    server = gss_server(env={**kerberos_realm.env, "KRB5_CONFIG": str(conf)})
    ccache = kerberos_realm.kinit("alice", tmp_path / "short", lifetime="2s")
    with kerberos_realm.environ(ccache):
        token = rfc1961.context().step()
    time.sleep(4.5)
    with socket.create_connection(server.address, timeout=10) as sock:
        sock.sendall(b"\x05\x01\x01" + rfc1961.frame(rfc1961.AUTH, token))
        assert rfc1961.recv_exact(sock, 2) == b"\x05\x01"
        assert rfc1961.recv_exact(sock, 2) == b"\x01\xff"
    wait_until(lambda: "GSSAPI authentication failed" in server.log(), 10, "the line")
    assert "expired" in server.log().lower()


def test_a_replayed_token_is_refused(gss_server: Any, kerberos_realm: Realm, alice: Path) -> None:
    server = gss_server()
    with kerberos_realm.environ(alice):
        token = rfc1961.context().step()
    answers = []
    for _ in range(2):
        with socket.create_connection(server.address, timeout=10) as sock:
            sock.sendall(b"\x05\x01\x01" + rfc1961.frame(rfc1961.AUTH, token))
            assert rfc1961.recv_exact(sock, 2) == b"\x05\x01"
            answers.append(rfc1961.recv_exact(sock, 2))
    assert answers == [b"\x01\x01", b"\x01\xff"], "the second use is a replay"


def test_a_service_without_a_key(gss_server: Any, kerberos_realm: Realm, alice: Path) -> None:
    """The client asks for other/localhost; the server holds only rcmd's key."""
    server = gss_server()
    with kerberos_realm.environ(alice):
        client = Client(server.address)
        client.greet()
        with pytest.raises(Aborted):
            client.establish("other@localhost")
    client.close()
    wait_until(lambda: "GSSAPI authentication failed" in server.log(), 10, "the line")


def test_a_key_for_another_service_is_not_enough(
    gss_server: Any, kerberos_realm: Realm, alice: Path, tmp_path: Path
) -> None:
    """
    The keytab holds both services' keys and the server is for C{other}: a
    context made for C{rcmd} is refused although it could be decrypted.
    """
    ktutil = require_tool("ktutil")
    both = tmp_path / "both.keytab"
    commands = f"rkt {kerberos_realm.keytab_path}\nrkt {kerberos_realm.other_keytab_path}\n"
    subprocess.run(
        [ktutil], input=commands + f"wkt {both}\nquit\n", text=True, check=True, timeout=30
    )
    server = gss_server("--gssapi-service=other", keytab=both)
    with kerberos_realm.environ(alice):
        client = Client(server.address)
        client.greet()
        with pytest.raises(Aborted):
            client.establish("rcmd@localhost")
        client.close()
        client = Client(server.address)
        client.greet()
        client.establish("other@localhost")
        assert client.ask_level(INTEGRITY) == INTEGRITY
    client.close()
    assert "not other/" in server.log()


def test_split_and_pipelined(
    gss_server: Any, kerberos_realm: Realm, alice: Path, echo_server: tuple[str, int]
) -> None:
    """The greeting and the token in one write; the level, request and data in one."""
    server = gss_server()
    with kerberos_realm.environ(alice):
        ctx = rfc1961.context()
        with socket.create_connection(server.address, timeout=10) as sock:
            first = b"\x05\x01\x01" + rfc1961.frame(rfc1961.AUTH, ctx.step())
            for i in range(len(first)):  # one byte at a time
                sock.sendall(first[i : i + 1])
            assert rfc1961.recv_exact(sock, 2) == b"\x05\x01"
            ctx.step(rfc1961.recv_message(sock, rfc1961.AUTH))
            assert ctx.complete
            level = rfc1961.frame(rfc1961.LEVEL, ctx.wrap(b"\x01", False).message)
            host, port = echo_server
            request = b"\x05\x01\x00\x01" + socket.inet_aton(host) + struct.pack("!H", port)
            wrapped = b"".join(
                rfc1961.frame(rfc1961.MESSAGE, ctx.wrap(m, False).message)
                for m in (request, b"ping")
            )
            sock.sendall(level + wrapped)
            assert ctx.unwrap(rfc1961.recv_message(sock, rfc1961.LEVEL)).message == b"\x01"
            plain = b""
            while len(plain) < 14:
                plain += ctx.unwrap(rfc1961.recv_message(sock, rfc1961.MESSAGE)).message
            assert plain[:2] == b"\x05\x00" and plain[10:] == b"ping"


def test_a_forged_message_ends_the_tunnel(
    gss_server: Any, kerberos_realm: Realm, alice: Path, echo_server: tuple[str, int]
) -> None:
    server = gss_server()
    client = negotiated(server, kerberos_realm, alice, INTEGRITY)
    with kerberos_realm.environ(alice):
        assert client.connect(*echo_server)[1] == 0
        message = bytearray(client.wrap(b"hello"))
        message[-1] ^= 0x01  # one bit of the token
        client.sock.sendall(bytes(message))
        with pytest.raises((Closed, ConnectionResetError)):
            client.recv(5)
    client.close()
    wait_until(lambda: "GSSAPI message from" in server.log(), 10, "the line")
    [line] = wait_session_line(server)
    assert "(GSSAPI message refused)" in line and "up=0 " in line


def test_an_unsealed_message_at_confidentiality(
    gss_server: Any, kerberos_realm: Realm, alice: Path, echo_server: tuple[str, int]
) -> None:
    server = gss_server()
    client = negotiated(server, kerberos_realm, alice, CONFIDENTIALITY)
    with kerberos_realm.environ(alice):
        assert client.connect(*echo_server)[1] == 0
        client.sock.sendall(client.wrap(b"in the clear", encrypt=False))
        with pytest.raises((Closed, ConnectionResetError)):
            client.recv(5)
    client.close()
    wait_until(lambda: "not encrypted" in server.log(), 10, "the line")


@pytest.fixture
def udp_echo() -> Iterator[tuple[str, int]]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                data, addr = sock.recvfrom(65535)
            except TimeoutError:
                continue
            sock.sendto(b"echo:" + data, addr)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield sock.getsockname()
    stop.set()
    thread.join(5)
    sock.close()


def test_udp_datagrams_are_wrapped(
    gss_server: Any, kerberos_realm: Realm, alice: Path, udp_echo: tuple[str, int]
) -> None:
    server = gss_server()
    client = negotiated(server, kerberos_realm, alice, CONFIDENTIALITY)
    with kerberos_realm.environ(alice), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        udp.settimeout(5)
        port = udp.getsockname()[1]
        client.send(b"\x05\x03\x00\x01" + socket.inet_aton("127.0.0.1") + struct.pack("!H", port))
        reply = client.recv(10)
        assert reply[1] == 0, reply.hex()
        relay = (socket.inet_ntoa(reply[4:8]), struct.unpack("!H", reply[8:10])[0])
        host, echo_port = udp_echo
        header = b"\x00\x00\x00\x01" + socket.inet_aton(host) + struct.pack("!H", echo_port)
        # Unwrapped: dropped (counted), never relayed.
        udp.sendto(header + b"bare", relay)
        udp.sendto(client.wrap_datagram(header + b"sealed"), relay)
        answer = client.unwrap_datagram(udp.recv(65535))
        assert answer == header + b"echo:sealed"
    client.close()
    [line] = wait_session_line(server)
    assert "UDP_ASSOCIATE" in line and "dropped=protection:1" in line, line
    assert "datagrams=1/1" in line


def test_gssapi_and_passwords_side_by_side(
    gss_server: Any, kerberos_realm: Realm, alice: Path
) -> None:
    server = gss_server("--auth=memory:carol:secret")
    with socket.create_connection(server.address, timeout=10) as sock:
        sock.sendall(b"\x05\x01\x02")
        assert rfc1961.recv_exact(sock, 2) == b"\x05\x02"
        sock.sendall(b"\x01\x05carol\x06secret")
        assert rfc1961.recv_exact(sock, 2) == b"\x01\x00"
    with socket.create_connection(server.address, timeout=10) as sock:
        sock.sendall(b"\x05\x02\x02\x01")
        assert rfc1961.recv_exact(sock, 2) == b"\x05\x01", "GSSAPI is preferred"
    with socket.create_connection(server.address, timeout=10) as sock:
        sock.sendall(b"\x05\x01\x00")
        assert rfc1961.recv_exact(sock, 2) == b"\x05\xff", "no anonymous method"


def test_a_wrapping_level_needs_replay_detection(
    gss_server: Any, kerberos_realm: Realm, alice: Path
) -> None:
    """A context without replay checks may authenticate, and then use clear only."""
    server = gss_server()
    with kerberos_realm.environ(alice):
        client = Client(server.address)
        client.greet()
        client.establish(replay=False)
        with pytest.raises(Aborted):
            client.ask_level(INTEGRITY)
        client.close()
        client = Client(server.address)
        client.greet()
        client.establish(replay=False)
        assert client.ask_level(CLEAR) == CLEAR
        client.close()
    wait_until(lambda: "does not detect replays" in server.log(), 10, "the line")
