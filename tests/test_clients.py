"""
Real third-party clients through the real C{twistd -n socks5}: curl, ncat,
PySocks and python-socks, fetching a blob whose hash is checked.
"""

from __future__ import annotations

import hashlib
import subprocess
from typing import Any

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.interfaces import IHostnameResolver
from twisted.internet.threads import deferToThread
from zope.interface import implementer

from socks5twist import SOCKS5ServerFactory

from .conftest import Blob, require_module, require_tool, wait_until


def curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [require_tool("curl"), "--silent", "--show-error", "--max-time", "30", *args],
        capture_output=True,
        timeout=60,
    )


def test_curl_socks5_ipv4(socks_server, origin, blob: Blob) -> None:
    host, port = socks_server.address
    result = curl("--socks5", f"{host}:{port}", f"http://{origin[0]}:{origin[1]}/blob")
    assert result.returncode == 0, result.stderr
    assert hashlib.sha256(result.stdout).hexdigest() == blob.sha256
    [line] = wait_until(socks_server.session_lines, 5, "the session line")
    assert f"CONNECT 127.0.0.1:{origin[1]} -> 127.0.0.1:{origin[1]} bound=127.0.0.1:" in line
    assert " reply=0x00 " in line
    down = int(line.split(" down=")[1].split()[0])
    assert len(blob.data) < down < len(blob.data) + 1024  # the blob and its headers


def test_curl_socks5_hostname_resolves_at_the_proxy(socks_server, origin, blob: Blob) -> None:
    host, port = socks_server.address
    result = curl("--socks5-hostname", f"{host}:{port}", f"http://localhost:{origin[1]}/x")
    assert result.returncode == 0, result.stderr
    assert hashlib.sha256(result.stdout).hexdigest() == blob.sha256
    [line] = wait_until(socks_server.session_lines, 5, "the session line")
    assert f"CONNECT localhost:{origin[1]} -> 127.0.0.1:{origin[1]}" in line


def test_curl_with_password_and_a_wrong_one(start_server, origin, blob: Blob) -> None:
    server = start_server("--auth", "memory:alice:s3cret")
    host, port = server.address
    url = f"http://127.0.0.1:{origin[1]}/"
    good = curl("--proxy", f"socks5h://alice:s3cret@{host}:{port}", url)
    assert good.returncode == 0, good.stderr
    assert hashlib.sha256(good.stdout).hexdigest() == blob.sha256
    bad = curl("--proxy", f"socks5h://alice:wrong-pw@{host}:{port}", url)
    assert bad.returncode == 97, bad  # curl: proxy handshake error
    assert b"authentication" in bad.stderr.lower() or b"User was rejected" in bad.stderr
    server.stop()
    log = server.log()
    assert "user=alice" in log
    assert "s3cret" not in log and "wrong-pw" not in log


def test_curl_over_ipv6(start_server, origin6, blob: Blob) -> None:
    server = start_server(host="::1")
    result = curl("--socks5", f"[::1]:{server.address[1]}", f"http://[::1]:{origin6[1]}/")
    assert result.returncode == 0, result.stderr
    assert hashlib.sha256(result.stdout).hexdigest() == blob.sha256
    [line] = wait_until(server.session_lines, 5, "the session line")
    assert "[::1]:" in line and f"-> [::1]:{origin6[1]}" in line


def test_curl_refused_destination(socks_server) -> None:
    from .conftest import free_port

    host, port = socks_server.address
    result = curl("--socks5", f"{host}:{port}", f"http://127.0.0.1:{free_port()}/")
    assert result.returncode == 97
    assert b"(5)" in result.stderr  # curl prints the reply code: connection refused


@implementer(IHostnameResolver)
class _NothingResolves:
    """A resolver that knows no name, so no lookup leaves this machine."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def resolveHostName(self, receiver, hostName, portNumber=0, addressTypes=None, transport="TCP"):
        self.names.append(hostName)
        receiver.resolutionBegan(None)
        receiver.resolutionComplete()


@pytest_twisted.inlineCallbacks
def test_curl_unresolvable_name():
    """A name that does not resolve gets X'04'; the resolver is injected (no DNS query)."""
    resolver = _NothingResolves()
    port: Any = reactor.listenTCP(0, SOCKS5ServerFactory(resolver=resolver), interface="127.0.0.1")
    try:
        address = f"127.0.0.1:{port.getHost().port}"
        result = yield deferToThread(
            curl, "--socks5-hostname", address, "http://No-Such-Host.invalid/"
        )
    finally:
        yield port.stopListening()
    assert result.returncode == 97
    assert b"(4)" in result.stderr  # host unreachable
    assert resolver.names == ["no-such-host.invalid"]


def test_ncat_through_the_proxy(socks_server, echo_server) -> None:
    ncat = require_tool("ncat")
    host, port = socks_server.address
    payload = bytes(range(256)) * 1000
    result = subprocess.run(
        [ncat, "--proxy", f"{host}:{port}", "--proxy-type", "socks5", *map(str, echo_server)],
        input=payload,
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    digest = hashlib.sha256(payload).hexdigest().encode()
    assert result.stdout == payload + b"SHA256:" + digest


def test_pysocks(start_server, origin, blob: Blob) -> None:
    socks = require_module("socks")
    server = start_server("--auth", "memory:bob:pw")
    sock = socks.socksocket()
    sock.set_proxy(socks.SOCKS5, *server.address, rdns=True, username="bob", password="pw")
    sock.settimeout(20)
    sock.connect(("localhost", origin[1]))
    sock.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
    response = b""
    while chunk := sock.recv(65536):
        response += chunk
    sock.close()
    assert hashlib.sha256(response.split(b"\r\n\r\n", 1)[1]).hexdigest() == blob.sha256


def test_python_socks(socks_server, echo_server) -> None:
    require_module("python_socks")
    from python_socks.sync import Proxy

    host, port = socks_server.address
    proxy = Proxy.from_url(f"socks5://{host}:{port}")
    sock = proxy.connect(dest_host=echo_server[0], dest_port=echo_server[1], timeout=20)
    sock.sendall(b"hello")
    assert sock.recv(5) == b"hello"
    sock.close()


def test_curl_with_a_file_checker(start_server, origin, blob: Blob, tmp_path) -> None:
    passwords = tmp_path / "passwd"
    passwords.write_text("carol:open sesame\n")
    server = start_server("--auth", f"file:{passwords}")
    host, port = server.address
    url = f"http://127.0.0.1:{origin[1]}/"
    good = curl("--proxy", f"socks5h://carol:open%20sesame@{host}:{port}", url)
    assert good.returncode == 0, good.stderr
    assert hashlib.sha256(good.stdout).hexdigest() == blob.sha256
    bad = curl("--proxy", f"socks5h://carol:closed@{host}:{port}", url)
    assert bad.returncode == 97


def test_help_auth_lists_the_checkers() -> None:
    from .conftest import TWISTD

    result = subprocess.run([*TWISTD, "socks5", "--help-auth"], capture_output=True, timeout=30)
    output = result.stdout.decode()
    assert "memory" in output and "file" in output, output
