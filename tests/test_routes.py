"""
Routes against real upstream proxies: chains through microsocks, Dante and
tinyproxy (HTTP CONNECT), failover past a dead upstream, wrong upstream
credentials, reply codes passed on, egress pools, reload, and the
commands refused through a route.

Every destination here tells each connection the address it came from, so
a test compares the way the rules chose with the way the connection came:
microsocks and tinyproxy are started with their outgoing address on
127.0.0.2 or 127.0.0.3 (C{-b}, C{Bind}), egress pools use those addresses.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import socketserver
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from socks5twist.routes import egress_for, parse_egress

from . import rawsocks, socks_peers
from .conftest import SocksServer, free_port, wait_until

Addr = tuple[str, int]


class _PeerHandler(socketserver.BaseRequestHandler):
    """Says where the connection came from (C{peer=HOST}), then echoes one read."""

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(10)
        with contextlib.suppress(OSError):
            sock.sendall(f"peer={self.client_address[0]}\n".encode())
            data = sock.recv(65536)
            if data:
                sock.sendall(data)


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@contextlib.contextmanager
def destination() -> Iterator[Addr]:
    server = _Server(("127.0.0.1", 0), _PeerHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield "127.0.0.1", server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def destinations() -> Iterator[Callable[[], Addr]]:
    """Start as many destinations as a test needs (each on its own port)."""
    with contextlib.ExitStack() as stack:
        yield lambda: stack.enter_context(destination())


def closed_port() -> int:
    """A loopback port nothing listens on (connections to it are refused)."""
    return free_port()


def peer_seen(
    server: SocksServer,
    host: str,
    port: int,
    credentials: tuple[bytes, bytes] | None = None,
) -> tuple[int, str | None]:
    """CONNECT through C{server}; the reply code and the source the destination saw."""
    sock, code = rawsocks.connect(server.address, host, port, credentials)
    with sock:
        if code != 0:
            return code, None
        line = b""
        while not line.endswith(b"\n"):
            chunk = sock.recv(100)
            assert chunk, f"closed after {line!r}"
            line += chunk
        sock.sendall(b"ping")
        assert rawsocks.recv_exact(sock, 4) == b"ping"
        assert line.startswith(b"peer=")
        return code, line[5:].strip().decode()


def write_rules(path: Path, *rules: str, default: str = "deny") -> Path:
    path.write_text(f'default = "{default}"\n\n' + "\n".join(rules))
    return path


def rule(port: int, route: str, **extra: str) -> str:
    more = "".join(f"{key} = {value}\n" for key, value in extra.items())
    return f'[[rule]]\naction = "allow"\nports = [{port}]\n{route}\n{more}'


def session_line(server: SocksServer, needle: str) -> str:
    def found() -> str | None:
        return next((x for x in server.session_lines() if needle in x), None)

    line = wait_until(found, 5, f"a session line with {needle!r}")
    assert isinstance(line, str)
    return line


# -- chains -------------------------------------------------------------------


def test_chains_through_microsocks_dante_and_tinyproxy_come_from_their_last_hop(
    start_server: Callable[..., SocksServer], tmp_path: Path, destinations: Callable[[], Addr]
) -> None:
    """
    One destination port per route; the destination sees the outgoing
    address of the route's last hop, and the session line names the route,
    never its credentials.
    """
    one, two, three, four = (destinations() for _ in range(4))
    with (
        socks_peers.microsocks("alice", "s3cret", bind="127.0.0.2") as ms_auth,
        socks_peers.microsocks(bind="127.0.0.3") as ms3,
        socks_peers.dante(tmp_path) as dante,
        socks_peers.tinyproxy(tmp_path, "bob", "pa55", bind="127.0.0.3") as tiny,
    ):
        ms_url = f"socks5://alice:s3cret@127.0.0.1:{ms_auth[1]}"
        rules = write_rules(
            tmp_path / "rules.toml",
            rule(one[1], f'via = ["{ms_url}"]'),
            # Two hops: Dante, then microsocks, which connects from 127.0.0.3.
            rule(two[1], f'via = ["socks5://127.0.0.1:{dante[1]}", "socks5://127.0.0.1:{ms3[1]}"]'),
            # HTTP CONNECT with Basic authentication.
            rule(three[1], f'via = ["http://bob:pa55@127.0.0.1:{tiny[1]}"]'),
            # SOCKS5 with RFC 1929, then HTTP: the hops mix.
            rule(four[1], f'via = ["{ms_url}", "http://bob:pa55@127.0.0.1:{tiny[1]}"]'),
        )
        server = start_server("--rules", str(rules))
        assert peer_seen(server, *one) == (0, "127.0.0.2")
        assert peer_seen(server, *two) == (0, "127.0.0.3")
        assert peer_seen(server, *three) == (0, "127.0.0.3")
        assert peer_seen(server, *four) == (0, "127.0.0.3")
        line = session_line(server, f"-> 127.0.0.1:{four[1]}")
        assert f"route=socks5://127.0.0.1:{ms_auth[1]}>http://127.0.0.1:{tiny[1]}" in line
        assert "s3cret" not in server.log() and "pa55" not in server.log()
        line = session_line(server, f"-> 127.0.0.1:{two[1]}")
        assert f"route=socks5://127.0.0.1:{dante[1]}>socks5://127.0.0.1:{ms3[1]}" in line


def test_names_go_to_the_upstream_unresolved(
    start_server: Callable[..., SocksServer], tmp_path: Path, destinations: Callable[[], Addr]
) -> None:
    """A rule about names decides on the name; the upstream gets the name."""
    dest = destinations()
    with socks_peers.microsocks() as ms:
        rules = write_rules(
            tmp_path / "rules.toml",
            '[[rule]]\naction = "allow"\nnames = ["localhost"]\n'
            f'via = ["socks5://127.0.0.1:{ms[1]}"]\n',
        )
        server = start_server("--rules", str(rules))
        code, peer = peer_seen(server, "localhost", dest[1])
        line = session_line(server, f"CONNECT localhost:{dest[1]}")
        assert f"-> localhost:{dest[1]}" in line and f"route=socks5://127.0.0.1:{ms[1]}" in line
        # microsocks resolves localhost itself: to 127.0.0.1, or to ::1 first,
        # where this destination does not listen (then it says so: X'05').
        assert (code, peer) in ((0, "127.0.0.1"), (5, None))


# -- failures -----------------------------------------------------------------


def test_reply_codes_of_the_last_hop_are_passed_on(
    start_server: Callable[..., SocksServer], tmp_path: Path, destinations: Callable[[], Addr]
) -> None:
    """X'05' from microsocks stays X'05'; tinyproxy's 403 is X'02', its 500 X'01'."""
    dest = destinations()
    refused_a, refused_b = closed_port(), closed_port()
    with (
        socks_peers.microsocks() as ms,
        # The HTTP proxy may CONNECT to refused_b only.
        socks_peers.tinyproxy(tmp_path, connect_ports=(refused_b,)) as tiny,
    ):
        http = f'via = ["http://127.0.0.1:{tiny[1]}"]'
        rules = write_rules(
            tmp_path / "rules.toml",
            rule(refused_a, f'via = ["socks5://127.0.0.1:{ms[1]}"]'),
            rule(refused_b, http),
            rule(dest[1], http),
        )
        server = start_server("--rules", str(rules))
        assert rawsocks.connect(server.address, "127.0.0.1", refused_a)[1] == 5
        assert rawsocks.connect(server.address, "127.0.0.1", refused_b)[1] == 1
        assert rawsocks.connect(server.address, *dest)[1] == 2
        line = session_line(server, f"-> 127.0.0.1:{dest[1]}")
        assert "reply=0x02" in line and "HTTP 403" in line
        line = session_line(server, f"-> 127.0.0.1:{refused_b}")
        assert "reply=0x01" in line and "HTTP 500" in line
        # An upstream that answered is not marked down.
        assert "marked down" not in server.log()


def test_a_dead_upstream_is_passed_over_for_the_next_and_marked_down(
    start_server: Callable[..., SocksServer], tmp_path: Path, destinations: Callable[[], Addr]
) -> None:
    dest, other = destinations(), destinations()
    dead, dead2 = closed_port(), closed_port()
    with socks_peers.microsocks(bind="127.0.0.3") as ms:
        rules = write_rules(
            tmp_path / "rules.toml",
            rule(
                dest[1],
                f'upstreams = [["socks5://127.0.0.1:{dead}"], ["socks5://127.0.0.1:{ms[1]}"]]',
            ),
            rule(
                other[1],
                f'upstreams = ["socks5://127.0.0.1:{dead}", "http://127.0.0.1:{dead2}"]',
            ),
        )
        server = start_server("--rules", str(rules))
        assert peer_seen(server, *dest) == (0, "127.0.0.3")
        down = f"upstream socks5://127.0.0.1:{dead} failed (route socks5://127.0.0.1:{dead}"
        wait_until(lambda: down in server.log(), 5, "the line marking the upstream down")
        assert "marked down, tried last for 30 s" in server.log()
        # Marked down: the next request goes to the live one first.
        assert peer_seen(server, *dest) == (0, "127.0.0.3")
        assert server.log().count(down) == 1
        assert f"CONNECT 127.0.0.1:{dead}" not in server.log()
        line = session_line(server, f"-> 127.0.0.1:{dest[1]}")
        assert f"route=socks5://127.0.0.1:{ms[1]}" in line
        # Every upstream down: X'01', and one line naming the hops tried.
        assert rawsocks.connect(server.address, *other)[1] == 1
        every = "every route of rule #2 failed"
        wait_until(lambda: every in server.log(), 5, "the line naming the hops tried")
        [line] = [x for x in server.log().splitlines() if every in x]
        assert f"socks5://127.0.0.1:{dead}" in line and f"http://127.0.0.1:{dead2}" in line
        assert "route=none" in session_line(server, f"CONNECT 127.0.0.1:{other[1]}")


def test_a_silent_upstream_times_out_and_the_next_is_tried(
    start_server: Callable[..., SocksServer], tmp_path: Path, destinations: Callable[[], Addr]
) -> None:
    dest = destinations()
    with (
        socket.socket() as silent,
        socks_peers.microsocks(bind="127.0.0.2") as ms,
    ):
        # Connections complete in the kernel's backlog; nothing ever answers.
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        hung = silent.getsockname()[1]
        rules = write_rules(
            tmp_path / "rules.toml",
            rule(
                dest[1],
                f'upstreams = ["socks5://127.0.0.1:{hung}", "socks5://127.0.0.1:{ms[1]}"]',
            ),
        )
        # (2 s: the same bound holds the attempt through microsocks, which
        # on a loaded machine can take more than a second to be scheduled.)
        server = start_server("--rules", str(rules), "--connect-timeout", "2")
        assert peer_seen(server, *dest) == (0, "127.0.0.2")
        log = server.log()
        assert f"upstream socks5://127.0.0.1:{hung} failed" in log and "timed out after 2 s" in log


def test_wrong_upstream_credentials_fail_with_x01_and_a_line_naming_the_hop(
    start_server: Callable[..., SocksServer], tmp_path: Path, destinations: Callable[[], Addr]
) -> None:
    dest, dest2 = destinations(), destinations()
    with (
        socks_peers.microsocks("alice", "right") as ms,
        socks_peers.tinyproxy(tmp_path, "bob", "right") as tiny,
    ):
        passwords = tmp_path / "upstreams.txt"
        passwords.write_text(f"# upstream credentials\n127.0.0.1:{tiny[1]} bob:Wr0ngPw\n")
        rules = write_rules(
            tmp_path / "rules.toml",
            rule(dest[1], f'via = ["socks5://alice:Wr0ngPw@127.0.0.1:{ms[1]}"]'),
            rule(
                dest2[1],
                f'via = ["http://127.0.0.1:{tiny[1]}"]',
                password_file=f'"{passwords}"',
            ),
        )
        server = start_server("--rules", str(rules))
        assert rawsocks.connect(server.address, *dest)[1] == 1
        assert rawsocks.connect(server.address, *dest2)[1] == 1
        # (tinyproxy answers wrong credentials with 401; others with 407.)
        wait_until(lambda: "HTTP 401" in server.log(), 5, "the HTTP proxy's refusal")
        log = server.log()
        assert f"upstream socks5://127.0.0.1:{ms[1]} failed" in log
        assert "refused the password of user alice" in log
        assert f"upstream http://127.0.0.1:{tiny[1]} failed" in log
        assert "Wr0ngPw" not in log


def test_the_password_file_gives_credentials(
    start_server: Callable[..., SocksServer], tmp_path: Path, destinations: Callable[[], Addr]
) -> None:
    dest = destinations()
    with socks_peers.microsocks("alice", "p:w d", bind="127.0.0.2") as ms:
        passwords = tmp_path / "upstreams.txt"
        passwords.write_text(f"127.0.0.1:{ms[1]} alice:p:w d\n")
        rules = write_rules(
            tmp_path / "rules.toml",
            rule(dest[1], f'via = ["socks5://127.0.0.1:{ms[1]}"]', password_file=f'"{passwords}"'),
        )
        server = start_server("--rules", str(rules))
        assert peer_seen(server, *dest) == (0, "127.0.0.2")


# -- egress -------------------------------------------------------------------


def test_egress_pool_keeps_each_user_on_one_address(
    start_server: Callable[..., SocksServer], tmp_path: Path, destinations: Callable[[], Addr]
) -> None:
    dest, single = destinations(), destinations()
    pool = ["127.0.0.2", "127.0.0.3"]
    rules = write_rules(
        tmp_path / "rules.toml",
        rule(dest[1], f"egress = {pool!r}".replace("'", '"')),
        rule(single[1], 'egress = ["127.0.0.3"]'),
    )
    users = ["alice", "bob", "carol", "dave"]
    server = start_server(
        "--rules", str(rules), "--auth", "memory:" + ":".join(f"{u}:pw" for u in users)
    )
    seen: dict[str, str | None] = {}
    for user in users * 2:
        code, peer = peer_seen(server, dest[0], dest[1], credentials=(user.encode(), b"pw"))
        assert code == 0
        assert seen.setdefault(user, peer) == peer  # the same address every time
        expected = egress_for([parse_egress(a) for a in pool], user)[4]
        assert peer == expected
    assert set(seen.values()) == set(pool)  # these four users spread over both
    alice = (b"alice", b"pw")
    assert peer_seen(server, single[0], single[1], credentials=alice) == (0, "127.0.0.3")
    line = session_line(server, f"-> 127.0.0.1:{single[1]}")
    assert "bound=127.0.0.3:" in line and "route=egress" in line


def test_egress_that_is_not_this_machines_stops_start_up_with_the_rules_line(
    tmp_path: Path,
) -> None:
    from .test_operations import start_up_error

    rules = write_rules(
        tmp_path / "rules.toml", rule(80, 'egress = ["127.0.0.2", "192.0.2.1"]'), default="allow"
    )
    output = start_up_error("--rules", str(rules))
    assert f"{rules}, line 6: [[rule]] #1: egress: 192.0.2.1: cannot bind" in output
    rules = write_rules(
        tmp_path / "rules.toml", rule(80, 'via = ["socks4://127.0.0.1:1080"]'), default="allow"
    )
    output = start_up_error("--rules", str(rules))
    assert f"{rules}, line 6" in output and "socks4" in output


# -- reload, and the other commands -------------------------------------------


def test_reload_changes_the_route_and_running_tunnels_keep_theirs(
    start_server: Callable[..., SocksServer], tmp_path: Path, destinations: Callable[[], Addr]
) -> None:
    dest = destinations()
    with (
        socks_peers.microsocks(bind="127.0.0.2") as ms2,
        socks_peers.microsocks(bind="127.0.0.3") as ms3,
    ):
        path = tmp_path / "rules.toml"
        write_rules(path, rule(dest[1], f'via = ["socks5://127.0.0.1:{ms2[1]}"]'))
        server = start_server("--rules", str(path))
        running, code = rawsocks.connect(server.address, *dest)
        assert code == 0
        assert rawsocks.recv_exact(running, 15) == b"peer=127.0.0.2\n"
        write_rules(path, rule(dest[1], f'via = ["socks5://127.0.0.1:{ms3[1]}"]'))
        server.process.send_signal(signal.SIGHUP)
        wait_until(lambda: "reloaded" in server.log(), 5, "the reload")
        assert peer_seen(server, *dest) == (0, "127.0.0.3")
        # The tunnel opened before the reload still goes the old way.
        running.sendall(b"still")
        assert rawsocks.recv_exact(running, 5) == b"still"
        running.close()
        write_rules(path, rule(dest[1], 'egress = ["127.0.0.2"]'))
        server.process.send_signal(signal.SIGHUP)
        wait_until(lambda: server.log().count("reloaded") == 2, 5, "the second reload")
        assert peer_seen(server, *dest) == (0, "127.0.0.2")


def bind_request(server: SocksServer, peer: str) -> tuple[socket.socket, int, str, int]:
    """BIND for C{peer}; the socket and the first reply's code, host and port."""
    sock = rawsocks.open_socket(server.address)
    sock.sendall(b"\x05\x01\x00")
    assert rawsocks.recv_exact(sock, 2) == b"\x05\x00"
    sock.sendall(b"\x05\x02\x00" + rawsocks.address_bytes(peer, 0))
    code, host, port, _ = rawsocks.read_reply(sock)
    return sock, code, host, port


def test_bind_through_dante_listens_there_and_relays_the_peer(
    start_server: Callable[..., SocksServer], tmp_path: Path
) -> None:
    with socks_peers.dante(tmp_path) as dante:
        rules = write_rules(
            tmp_path / "rules.toml",
            '[[rule]]\naction = "allow"\ncommands = ["bind"]\n'
            f'via = ["socks5://127.0.0.1:{dante[1]}"]\n',
        )
        server = start_server("--rules", str(rules))
        sock, code, host, port = bind_request(server, "127.0.0.1")
        with sock:
            assert code == 0
            # The address is Dante's listener, not this proxy's.
            with socket.create_connection((host, port), timeout=10) as peer:
                code, peer_host, peer_port, _ = rawsocks.read_reply(sock)
                assert (code, peer_host, peer_port) == (0, *peer.getsockname())
                peer.sendall(b"from the peer")
                assert rawsocks.recv_exact(sock, 13) == b"from the peer"
                sock.sendall(b"to the peer")
                assert rawsocks.recv_exact(peer, 11) == b"to the peer"
        line = session_line(server, "BIND 127.0.0.1:0")
        assert f"bound={host}:{port}" in line and f"route=socks5://127.0.0.1:{dante[1]}" in line


def test_bind_and_udp_that_a_route_cannot_carry_get_x07(
    start_server: Callable[..., SocksServer], tmp_path: Path
) -> None:
    """microsocks answers BIND with X'07' (passed on); HTTP cannot BIND; UDP never goes."""
    with socks_peers.microsocks() as ms:
        rules = write_rules(
            tmp_path / "rules.toml",
            '[[rule]]\naction = "allow"\ncommands = ["bind"]\nclients = ["127.0.0.1/32"]\n'
            f'via = ["socks5://127.0.0.1:{ms[1]}"]\n',
            '[[rule]]\naction = "allow"\ncommands = ["bind", "udp"]\n'
            'via = ["http://127.0.0.1:3128"]\n',
        )
        server = start_server("--rules", str(rules))
        sock, code, _, _ = bind_request(server, "127.0.0.1")
        sock.close()
        assert code == 7
        line = session_line(server, "BIND 127.0.0.1:0")
        assert "reply=0x07" in line and f"route=socks5://127.0.0.1:{ms[1]}" in line
        # From 127.0.0.2: the second rule, through an HTTP proxy.
        for command in (b"\x02", b"\x03"):
            with socket.socket() as sock:
                sock.settimeout(10)
                sock.bind(("127.0.0.2", 0))
                sock.connect(server.address)
                sock.sendall(b"\x05\x01\x00")
                assert rawsocks.recv_exact(sock, 2) == b"\x05\x00"
                sock.sendall(b"\x05" + command + b"\x00" + rawsocks.address_bytes("0.0.0.0", 0))
                assert rawsocks.read_reply(sock)[0] == 7
        line = session_line(server, "UDP_ASSOCIATE 0.0.0.0:0")
        assert "reply=0x07" in line and "through upstream proxies is not supported" in line
        assert "BIND through an HTTP proxy is not possible" in session_line(server, "BIND 0.0.0.0")
        assert "rule #2 sends requests through upstream proxies, and UDP" in server.log()


def test_readme_routes_example_loads(tmp_path: Path) -> None:
    from socks5twist import rules

    from .test_readme import blocks

    _, language, text = blocks()["routes"]
    assert language == "toml"
    passwords = tmp_path / "upstreams"
    passwords.write_text("proxy.partner.example:3128 partner:secret\n")
    parsed = rules.parse(text.replace("/etc/socks5twist/upstreams", str(passwords)), "README.md")
    partners, web, rest = (r.route for r in parsed.rules)
    assert partners is not None and web is not None and rest is not None
    [chain] = partners.chains
    assert [h.label for h in chain] == [
        "socks5://10.0.0.5:1080",
        "http://proxy.partner.example:3128",
    ]
    assert chain[0].credentials == (b"alice", b"s3cret")
    assert chain[1].credentials == (b"partner", b"secret")
    assert [len(c) for c in web.chains] == [1, 2]
    assert [str(ip) for ip in rest.egress] == ["127.0.0.2", "127.0.0.3"]
    assert "s3cret" not in "".join(rules.describe(parsed)) + repr(parsed)
