"""
C{twistd socks5 --gssapi} at start-up, for real: each bad value and each
keytab that cannot serve stops the start with one line on stderr (never a
traceback); a keytab that MIT's ktutil wrote, holding the service's key,
starts a server that offers GSSAPI and refuses clients that offer nothing
it accepts.
"""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

from . import rawsocks
from .conftest import require_module, require_tool
from .test_startup import refused_start, without_capabilities

SERVICE_KEY = "rcmd/localhost@SOCKS.TEST"


def ktutil_keytab(path: Path, *principals: str) -> Path:
    """A keytab of password-derived keys (no KDC needed), written by MIT's ktutil."""
    ktutil = require_tool("ktutil")
    commands = []
    for principal in principals:
        commands += [f"addent -password -p {principal} -k 1 -e aes256-cts-hmac-sha1-96", "pw"]
    commands += [f"wkt {path}", "quit"]
    subprocess.run(
        [ktutil], input="\n".join(commands) + "\n", text=True, capture_output=True, timeout=30
    )
    assert path.stat().st_size > 2, "ktutil wrote no keys"
    return path


@pytest.fixture
def keytab(tmp_path: Path) -> Path:
    return ktutil_keytab(tmp_path / "socks.keytab", SERVICE_KEY, "host/other@SOCKS.TEST")


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--gssapi-service", "socks"], "--gssapi-service needs --gssapi"),
        (["--gssapi-keytab", "/etc/krb5.keytab"], "--gssapi-keytab needs --gssapi"),
        (["--gssapi-protection", "clear"], "--gssapi-protection needs --gssapi"),
        (["--gssapi-nec"], "--gssapi-nec needs --gssapi"),
        (
            ["--gssapi", "--gssapi-service", "rcmd/localhost"],
            "--gssapi-service takes a service name like rcmd",
        ),
        (
            ["--gssapi", "--gssapi-protection", "integrity,privacy"],
            "--gssapi-protection: 'privacy' is not a level (any of clear, integrity,"
            " confidentiality, comma-separated)",
        ),
    ],
)
def test_bad_gssapi_value_stops_the_start_with_one_line(args: list[str], says: str) -> None:
    assert says in refused_start("--port", "tcp:0:interface=127.0.0.1", *args)


def test_keytabs_that_cannot_serve_are_one_line_each(tmp_path: Path, keytab: Path) -> None:
    require_module("gssapi")
    port = ["--port", "tcp:0:interface=127.0.0.1", "--gssapi"]
    missing = tmp_path / "missing.keytab"
    assert refused_start(*port, "--gssapi-keytab", str(missing)) == (
        f"--gssapi-keytab {missing}: cannot read it: No such file or directory"
    )
    garbage = tmp_path / "garbage.keytab"
    garbage.write_bytes(b"\x05\x02\x00\x00\x01\x00rest")
    assert refused_start(*port, "--gssapi-keytab", str(garbage)) == (
        f"--gssapi-keytab {garbage}: not a keytab: at byte 2: a record of 256 bytes,"
        " 4 left (truncated)"
    )
    assert refused_start(*port, "--gssapi-keytab", str(keytab), "--gssapi-service", "socks") == (
        f"--gssapi-keytab {keytab}: no key for the service socks (socks/HOST@REALM); it holds"
        f" {SERVICE_KEY}, host/other@SOCKS.TEST (--gssapi-service names the service)"
    )


def test_keytab_from_krb5_ktname_is_named_so(tmp_path: Path) -> None:
    require_module("gssapi")
    missing = tmp_path / "env.keytab"
    line = refused_start(
        "--port",
        "tcp:0:interface=127.0.0.1",
        "--gssapi",
        env={**os.environ, "KRB5_KTNAME": f"FILE:{missing}"},
    )
    assert line == (
        f"--gssapi: the keytab FILE:{missing} (from KRB5_KTNAME): cannot read it:"
        " No such file or directory"
    )


def test_unreadable_keytab_says_whom_the_server_runs_as(tmp_path: Path, keytab: Path) -> None:
    """The usual mistake: a keytab readable by root only, a server run as another user."""
    require_module("gssapi")
    keytab.chmod(0o000)
    prefix = without_capabilities("dac_override", "dac_read_search")
    line = refused_start(
        "--port",
        "tcp:0:interface=127.0.0.1",
        "--gssapi",
        "--gssapi-keytab",
        str(keytab),
        prefix=prefix,
    )
    assert line.startswith(f"--gssapi-keytab {keytab}: cannot read it: Permission denied"), line
    assert f"(uid {os.geteuid()}): let it read the keytab)" in line, line


def test_auth_method_without_its_option_names_the_line(tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(
        'default = "allow"\n\n[[auth]]\nclients = ["10.0.0.0/8"]\nmethod = ["gssapi", "none"]\n'
    )
    line = refused_start("--port", "tcp:0:interface=127.0.0.1", "--rules", str(rules))
    assert line == f'--rules {rules}, line 5: [[auth]] #1: method "gssapi" needs --gssapi'


def test_a_keytab_with_the_services_key_starts_a_server_that_wants_gssapi(
    start_server, keytab: Path, tmp_path: Path
) -> None:
    """
    GSSAPI only: a client offering no authentication (X'00') is refused with
    X'FF'.  Beside a password and an [[auth]] table for loopback: the table
    decides (no authentication first), and others get a password.
    """
    require_module("gssapi")
    server = start_server("--gssapi", "--gssapi-keytab", str(keytab))
    log = server.log()
    assert (
        f"GSSAPI (service rcmd, keytab {keytab}, levels integrity, confidentiality) required;"
        " serving clients in 0.0.0.0/0, ::/0"
    ) in log, log
    assert greet(server.address, b"\x05\x01\x00") == b"\x05\xff"

    rules = tmp_path / "rules.toml"
    rules.write_text(
        'default = "allow"\n[[auth]]\nclients = ["127.0.0.2/32"]\nmethod = ["none", "gssapi"]\n'
    )
    both = start_server(
        "--gssapi",
        "--gssapi-keytab",
        str(keytab),
        "--gssapi-protection",
        "clear,confidentiality",
        "--gssapi-nec",
        "--auth",
        "memory:alice:pw",
        "--rules",
        str(rules),
    )
    assert (
        "GSSAPI (service rcmd, keytab "
        f"{keytab}, levels clear, confidentiality, NEC's unwrapped level too) or"
        " username/password required"
    ) in both.log()
    assert greet(both.address, b"\x05\x02\x00\x02") == b"\x05\x02"
    assert greet(both.address, b"\x05\x02\x00\x02", source="127.0.0.2") == b"\x05\x00"


def greet(server: tuple[str, int], greeting: bytes, source: str = "127.0.0.1") -> bytes:
    """The server's method selection for C{greeting}."""
    with socket.create_connection(server, timeout=5, source_address=(source, 0)) as sock:
        sock.sendall(greeting)
        return rawsocks.recv_exact(sock, 2)
