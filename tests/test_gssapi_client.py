"""
L{SOCKS5ClientEndpoint} with GSSAPI (RFC 1961) over a real MIT KDC
(L{tests.kerberos}), against an independent RFC 1961 server
(L{tests.rfc1961_server}, python-gssapi and the RFC only; Debian's Dante is
built without GSSAPI, see there).  A megabyte goes each way intact at each
protection level; a level the server imposes and the client does not allow,
no ticket, and a service the server has no key for are clean errors.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.endpoints import clientFromString

from socks5twist.client import (
    GSSAPIAborted,
    GSSAPIError,
    ProtectionLevelRefused,
    SOCKS5ClientEndpoint,
)
from socks5twist.gsswire import Protection

from .conftest import free_port, require_module, wait_until
from .kerberos import Realm
from .test_client_endpoint import destination, eventually, exchange, failure_of, tcp

__all__ = ["destination"]  # the fixture, from test_client_endpoint

ROOT = Path(__file__).resolve().parent.parent


class RFC1961Server:
    """The test server in a subprocess, stopped by its PID; C{lines()}: what it printed."""

    def __init__(self, realm: Realm, workdir: Path, levels: str, nec: bool = False) -> None:
        require_module("gssapi")
        self.port = free_port()
        self.output = workdir / f"rfc1961-{self.port}.out"
        command = [sys.executable, "-m", "tests.rfc1961_server", str(self.port)]
        command += [str(realm.keytab_path), levels] + (["nec"] if nec else [])
        with self.output.open("wb") as out:
            self.process = subprocess.Popen(
                command, cwd=ROOT, env=realm.env, stdin=subprocess.DEVNULL, stdout=out, stderr=out
            )

        def ready() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"the RFC 1961 server exited: {self.output.read_text()}")
            return "ready" in self.lines()

        wait_until(ready, 20, "the RFC 1961 server")

    @property
    def address(self) -> tuple[str, int]:
        return "127.0.0.1", self.port

    def lines(self) -> list[str]:
        return self.output.read_text(errors="replace").splitlines()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


@pytest.fixture
def rfc1961(kerberos_realm: Realm, tmp_path: Path) -> Iterator[Any]:
    """Starts servers: C{rfc1961("integrity,confidentiality", nec=False)}."""
    started: list[RFC1961Server] = []

    def start(levels: str, nec: bool = False) -> RFC1961Server:
        server = RFC1961Server(kerberos_realm, tmp_path, levels, nec)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def alice(kerberos_realm: Realm, tmp_path: Path) -> Iterator[Realm]:
    """This process speaks Kerberos in the realm with alice's ticket (restored after)."""
    ccache = kerberos_realm.kinit("alice", tmp_path / "alice.cc")
    with kerberos_realm.environ(ccache):
        yield kerberos_realm


def _digest(payload: bytes) -> bytes:
    return b"SHA256:" + hashlib.sha256(payload).hexdigest().encode()


@pytest.mark.parametrize("level", ["clear", "integrity", "confidentiality"])
@pytest_twisted.inlineCallbacks
def test_a_megabyte_each_way_at_each_level(rfc1961, alice, destination, level):
    server = rfc1961(level)
    payload = os.urandom(1 << 20)
    endpoint = SOCKS5ClientEndpoint(
        tcp(server.address),
        "127.0.0.1",
        destination.port,
        gssapi="rcmd@localhost",
        gssapi_protection=Protection[level.upper()],
    )
    tunnel, line, rest = yield exchange(endpoint, payload, half_close=True)
    assert line.startswith("peer=127.0.0.1 ")
    assert rest == payload + _digest(payload)
    wanted = Protection[level.upper()]
    assert (tunnel.protection.level if tunnel.protection else Protection.CLEAR) == wanted
    assert f"user alice@SOCKS.TEST asked {int(wanted)} level {int(wanted)}" in server.lines()


@pytest_twisted.inlineCallbacks
def test_the_endpoint_string_and_nec_mode(rfc1961, alice, destination):
    server = rfc1961("integrity", nec=True)
    endpoint = clientFromString(
        reactor,
        f"socks5:127.0.0.1:{destination.port}:proxy=tcp\\:127.0.0.1\\:{server.port}"
        ":gssapi=rcmd@localhost:gssapi_protection=integrity:gssapi_nec=yes:timeout=20",
    )
    _, _, rest = yield exchange(endpoint, b"hello", half_close=True)
    assert rest == b"hello" + _digest(b"hello")
    assert "user alice@SOCKS.TEST asked 1 level 1" in server.lines()


@pytest_twisted.inlineCallbacks
def test_a_level_weaker_than_asked_is_refused_a_stronger_one_taken(rfc1961, alice, destination):
    server = rfc1961("integrity")
    proxy = tcp(server.address)
    endpoint = SOCKS5ClientEndpoint(proxy, "127.0.0.1", destination.port, gssapi="rcmd@localhost")
    error = yield failure_of(endpoint)
    assert isinstance(error, ProtectionLevelRefused)
    assert "chose protection level 1 (integrity)" in str(error)
    assert destination.peers == []  # the request was never sent
    stronger = rfc1961("confidentiality")
    endpoint = SOCKS5ClientEndpoint(
        tcp(stronger.address),
        "127.0.0.1",
        destination.port,
        gssapi="rcmd@localhost",
        gssapi_protection=Protection.INTEGRITY,
    )
    tunnel, _, rest = yield exchange(endpoint, b"hi", half_close=True)
    assert rest == b"hi" + _digest(b"hi") and tunnel.protection.level is Protection.CONFIDENTIALITY


@pytest_twisted.inlineCallbacks
def test_no_ticket_is_a_clean_error(rfc1961, kerberos_realm, destination):
    server = rfc1961("integrity,confidentiality")
    with kerberos_realm.environ():  # a ticket cache that holds nothing
        endpoint = SOCKS5ClientEndpoint(
            tcp(server.address), "127.0.0.1", destination.port, gssapi="rcmd@localhost"
        )
        error = yield failure_of(endpoint)
    assert type(error) is GSSAPIError
    assert "No Kerberos credentials available" in str(error)
    assert str(error).isprintable() and destination.peers == []


@pytest_twisted.inlineCallbacks
def test_a_service_the_server_has_no_key_for(rfc1961, alice, destination):
    server = rfc1961("integrity,confidentiality")
    endpoint = SOCKS5ClientEndpoint(
        tcp(server.address), "127.0.0.1", destination.port, gssapi="other@localhost"
    )
    error = yield failure_of(endpoint)
    assert isinstance(error, GSSAPIAborted)
    lines = yield eventually(lambda: [x for x in server.lines() if x.startswith("abort")])
    assert "not found in keytab" in lines[0]
    assert destination.peers == []


@pytest.mark.parametrize("level", ["integrity", "confidentiality"])
@pytest_twisted.inlineCallbacks
def test_through_socks5twist_itself(start_server, kerberos_realm, alice, destination, level):
    """Both ends ours: the client endpoint through C{twistd -n socks5 --gssapi}."""
    server = start_server(
        "--gssapi",
        f"--gssapi-keytab={kerberos_realm.keytab_path}",
        f"--gssapi-protection={level}",
        env=kerberos_realm.env,
    )
    payload = os.urandom(1 << 20)
    endpoint = SOCKS5ClientEndpoint(
        tcp(server.address),
        "127.0.0.1",
        destination.port,
        gssapi="rcmd@localhost",
        gssapi_protection=Protection[level.upper()],
    )
    tunnel, _, rest = yield exchange(endpoint, payload, half_close=True)
    assert rest == payload + _digest(payload)
    assert tunnel.protection.level == Protection[level.upper()]
    yield eventually(lambda: server.session_lines(), what="the session line")
    [line] = server.session_lines()
    assert "user=alice@SOCKS.TEST" in line and f" gssapi={level} " in line
