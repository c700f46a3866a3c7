"""
Routes through Kerberised SOCKS5 upstreams (C{socks5+gssapi://} hops)
against the real servers and a real MIT KDC (L{tests.kerberos}): a front
socks5twist, no authentication for its clients, whose environment holds a
ticket cache (or a client keytab), routes through an upstream socks5twist
C{--gssapi}; a raw client sends a megabyte each way through both.  The
upstream names the front's principal and the level; a level asked for is
honoured; a front without a ticket, a service the upstream has no key for
(its abort) and a level the front refuses each fail over to the next
alternative with one line naming the hop, or, with none left, answer X'01'.
Every address is loopback; the KDC is the realm's.
"""

from __future__ import annotations

import hashlib
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from . import rawsocks
from .conftest import SocksServer, free_port, require_module, wait_until
from .kerberos import Realm
from .test_routes import rule, session_line, write_rules

require_module("gssapi")

MEGABYTE = bytes(range(256)) * 4096


@pytest.fixture(scope="module")
def alice(kerberos_realm: Realm, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Alice's ticket cache: the front's credentials."""
    return kerberos_realm.kinit("alice", tmp_path_factory.mktemp("alice") / "ccache")


def front_env(realm: Realm, ccache: Path | str, **more: str) -> dict[str, str]:
    """The realm's environment with the ticket cache C{ccache} (and C{more})."""
    env = realm.env
    env["KRB5CCNAME"] = f"FILE:{ccache}"
    env.update(more)
    return env


def kerberised_upstream(
    start_server: Callable[..., SocksServer],
    realm: Realm,
    levels: str = "integrity,confidentiality",
) -> SocksServer:
    """socks5twist --gssapi (service rcmd/localhost) that also takes carol's password."""
    return start_server(
        "--gssapi",
        f"--gssapi-keytab={realm.keytab_path}",
        f"--gssapi-protection={levels}",
        "--auth=memory:carol:secret",
        env=realm.env,
    )


def megabyte_through(front: SocksServer, destination: tuple[str, int], eof: bool = True) -> bytes:
    """
    A megabyte each way through C{front} to the digest echo; with C{eof},
    then a half-close and the echo's SHA-256 line (TLS cannot half-close:
    see the README's client TLS section), else C{DIGEST} once the echo is
    intact.
    """
    sock, code = rawsocks.connect(front.address, *destination, timeout=30)
    with sock:
        assert code == 0
        sender = threading.Thread(target=sock.sendall, args=(MEGABYTE,))
        sender.start()
        echoed = rawsocks.recv_exact(sock, len(MEGABYTE))
        sender.join(30)
        assert echoed == MEGABYTE
        if not eof:
            return DIGEST
        sock.shutdown(socket.SHUT_WR)
        return rawsocks.recv_exact(sock, len("SHA256:") + 64)


DIGEST = b"SHA256:" + hashlib.sha256(MEGABYTE).hexdigest().encode()


@pytest.mark.parametrize(
    ("query", "level"),
    [("", "confidentiality"), ("?protection=integrity", "integrity")],
    ids=["default", "integrity"],
)
def test_a_megabyte_through_a_kerberised_upstream_as_the_fronts_principal(
    start_server: Callable[..., SocksServer],
    kerberos_realm: Realm,
    alice: Path,
    echo_server: tuple[str, int],
    tmp_path: Path,
    query: str,
    level: str,
) -> None:
    upstream = kerberised_upstream(start_server, kerberos_realm)
    hop = f"socks5+gssapi://localhost:{upstream.address[1]}"
    rules = write_rules(tmp_path / "rules.toml", rule(echo_server[1], f'via = ["{hop}{query}"]'))
    front = start_server("--rules", str(rules), env=front_env(kerberos_realm, alice))

    assert megabyte_through(front, echo_server) == DIGEST
    line = session_line(upstream, f"CONNECT 127.0.0.1:{echo_server[1]} ")
    assert " user=alice@SOCKS.TEST " in line
    assert f" gssapi={level} " in line and "relay=stream" in line
    assert f"up={len(MEGABYTE)} down={len(MEGABYTE) + 71}" in line
    mine = session_line(front, f"CONNECT 127.0.0.1:{echo_server[1]}")
    assert f"route={hop} " in mine and "reply=0x00" in mine


def test_a_client_keytab_gets_the_fronts_tickets_by_itself(
    start_server: Callable[..., SocksServer],
    kerberos_realm: Realm,
    echo_server: tuple[str, int],
    tmp_path: Path,
) -> None:
    """KRB5_CLIENT_KTNAME, as a systemd unit's Environment= sets it; no kinit."""
    principal = "frontproxy"
    kerberos_realm.add_principal(principal)
    keytab = kerberos_realm.keytab(principal, tmp_path / "client.keytab")
    upstream = kerberised_upstream(start_server, kerberos_realm)
    hop = f"socks5+gssapi://localhost:{upstream.address[1]}"
    rules = write_rules(tmp_path / "rules.toml", rule(echo_server[1], f'via = ["{hop}"]'))
    tickets = tmp_path / "tickets"  # none yet
    env = front_env(kerberos_realm, tickets, KRB5_CLIENT_KTNAME=f"FILE:{keytab}")
    front = start_server("--rules", str(rules), env=env)

    assert megabyte_through(front, echo_server) == DIGEST
    line = session_line(upstream, f"CONNECT 127.0.0.1:{echo_server[1]} ")
    assert f" user={principal}@SOCKS.TEST " in line and " gssapi=confidentiality " in line
    # MIT kept what it got from the keytab in the cache, for the next tunnels.
    assert tickets.stat().st_size > 0


# (front's ticket cache, the hop's query, the upstream's levels, what the line says)
FAILURES = {
    "no ticket": (None, "", "integrity,confidentiality", "GSSAPI with the proxy failed: "),
    "a service the upstream has no key for": (
        "alice",
        "?service=other",
        "integrity,confidentiality",
        "the proxy refused (it sent an abort, X'01 FF')",
    ),
    "a level the front refuses": (
        "alice",
        "",
        "clear,integrity",
        "the proxy chose protection level 1 (integrity); this client asked for 2",
    ),
}


@pytest.mark.parametrize("case", list(FAILURES))
def test_a_failing_kerberised_hop_fails_over_with_one_line_or_answers_x01(
    start_server: Callable[..., SocksServer],
    kerberos_realm: Realm,
    alice: Path,
    echo_server: tuple[str, int],
    tmp_path: Path,
    case: str,
) -> None:
    ccache, query, levels, says = FAILURES[case]
    upstream = kerberised_upstream(start_server, kerberos_realm, levels)
    port = upstream.address[1]
    hop = f"socks5+gssapi://localhost:{port}"
    rules = write_rules(
        tmp_path / "rules.toml",
        # Kerberos first, then the same upstream with carol's password.
        rule(
            echo_server[1],
            f'upstreams = [["{hop}{query}"], ["socks5://carol:secret@127.0.0.1:{port}"]]',
        ),
        rule(echo_server[1] + 1, f'via = ["{hop}{query}"]'),
    )
    cache = alice if ccache else kerberos_realm.default_ccache
    front = start_server("--rules", str(rules), env=front_env(kerberos_realm, cache))

    sock, code = rawsocks.connect(front.address, *echo_server)
    with sock:
        assert code == 0
        sock.sendall(b"ping")
        assert rawsocks.recv_exact(sock, 4) == b"ping"
    line = session_line(upstream, f"CONNECT 127.0.0.1:{echo_server[1]} ")
    assert " user=carol " in line
    failed = [x for x in front.log().splitlines() if f"upstream {hop} failed" in x]
    assert len(failed) == 1, front.log()
    assert says in failed[0] and "marked down" in failed[0]

    # With no alternative: X'01', and the line naming the hop and why.
    sock, code = rawsocks.connect(front.address, "127.0.0.1", echo_server[1] + 1)
    sock.close()
    assert code == 1
    mine = session_line(front, f"CONNECT 127.0.0.1:{echo_server[1] + 1}")
    assert "reply=0x01" in mine and "route=none" in mine
    every = wait_until(
        lambda: [x for x in front.log().splitlines() if "every route of rule #2" in x],
        5,
        "the line of the routes tried",
    )
    assert f"{hop} (" in every[0] and says in every[0]
    # No password, no ticket or key material in the front's log.
    assert "secret" not in front.log()


def test_a_socks5s_gssapi_hop_is_kerberos_inside_tls(
    start_server: Callable[..., SocksServer],
    kerberos_realm: Realm,
    alice: Path,
    echo_server: tuple[str, int],
    tmp_path: Path,
) -> None:
    require_module("OpenSSL")
    require_module("service_identity")
    from .tlscerts import Authority

    ca = Authority(tmp_path / "ca")
    issued = ca.issue("upstream", "localhost")
    port = free_port()
    listen = f"ssl:{port}:interface=127.0.0.1:privateKey={issued.key}:certKey={issued.cert}"
    upstream: Any = start_server(
        "--gssapi",
        f"--gssapi-keytab={kerberos_realm.keytab_path}",
        "--port",
        listen,
        connect_to=("127.0.0.1", port),
        env=kerberos_realm.env,
    )
    hop = f"socks5s+gssapi://localhost:{port}"
    rules = write_rules(
        tmp_path / "rules.toml",
        rule(echo_server[1], f'via = ["{hop}?protection=integrity"]', ca_file=f'"{ca.ca_file}"'),
    )
    front = start_server("--rules", str(rules), env=front_env(kerberos_realm, alice))

    assert megabyte_through(front, echo_server, eof=False) == DIGEST
    line = session_line(upstream, f"CONNECT 127.0.0.1:{echo_server[1]} ")
    assert " user=alice@SOCKS.TEST " in line and " gssapi=integrity " in line
    assert f"route={hop} " in session_line(front, f"CONNECT 127.0.0.1:{echo_server[1]}")


def test_readme_gssapi_routes_example_loads() -> None:
    from socks5twist import rules
    from socks5twist.gsswire import Protection

    from .test_readme import blocks

    _, language, text = blocks()["routes-gssapi"]
    assert language == "toml"
    parsed = rules.parse('default = "deny"\n' + text, "README.md")
    [rule] = parsed.rules
    assert rule.route is not None
    [dante], [socks] = rule.route.chains
    assert (dante.label, dante.gssapi, dante.protection) == (
        "socks5+gssapi://dante.example.org:1080",
        "rcmd@dante.example.org",
        Protection.INTEGRITY,
    )
    assert (socks.label, socks.gssapi, socks.protection, socks.tls) == (
        "socks5s+gssapi://socks.example.org:1443",
        "socks@socks.example.org",
        Protection.CONFIDENTIALITY,
        True,
    )
