"""
The operator's first minutes, with the real C{twistd socks5}: every value
that cannot work stops the start with one line on stderr and a non-zero
status (never a traceback), a bare port serves IPv4 and IPv6 clients alike,
IPv4 clients of a dual-stack socket are seen as IPv4, and C{--version},
C{--help} and the C{socks5twist} command say what an operator needs.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from . import rawsocks, test_udp
from .conftest import IN_CI, TWISTD, Blob, free_port, require_tool, wait_until
from .test_udp import associate, udp_header

# test_udp's UDP echo servers, a fixture of this module too.
udp_echo = test_udp.udp_echo
# Never an address of this machine (TEST-NET-1): a bind to it must fail.
NOT_OURS = "192.0.2.7"


def refused_start(
    *args: str, prefix: list[str] | None = None, env: dict[str, str] | None = None
) -> str:
    """
    Run C{twistd -n socks5 ARGS}, which must stop at once: return its one
    line on stderr, after checking the status and that nothing anywhere in
    its output is a traceback.
    """
    result = subprocess.run(
        [*(prefix or []), *TWISTD, "-n", "--pidfile=", "socks5", *args],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        env=env,
    )
    everything = result.stdout + result.stderr
    assert result.returncode != 0, everything
    assert "Traceback" not in everything, everything
    lines = result.stderr.splitlines()
    assert len(lines) == 1, everything
    assert lines[0].startswith("twistd socks5: error: "), everything
    return lines[0].removeprefix("twistd socks5: error: ")


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--port", "65536"], "--port '65536': a port is a number from 0 to 65535"),
        (["--port", "99999"], "--port '99999': a port is a number from 0 to 65535"),
        (["--port", "tcp:99999"], "the port must be a number from 0 to 65535, not '99999'"),
        (["--metrics", "tcp:99999"], "--metrics 'tcp:99999': the port must be a number from 0"),
        (["--port", "-1"], "a port is a number from 0 to 65535"),
        (
            ["--port", "1080", "--port", "1080"],
            "--port '1080': tcp:1080 is already listened on by an earlier --port",
        ),
        (
            ["--port", "unix:/nonexistent/dir/s.sock"],
            "the directory /nonexistent/dir does not exist",
        ),
        (
            ["--port", "tcp:19090:interface=::1"],
            "must be escaped with a backslash: tcp:19090:interface=\\:\\:1",
        ),
        (["--port", "systemd:domain=INET:index=0"], "systemd passed no such socket"),
        (["--idle-timeout", "nan"], "--idle-timeout must be 0 or more seconds, not 'nan'"),
        (["--connect-timeout", "-1"], "--connect-timeout must be 0 or more seconds"),
        (["--shutdown-grace", "inf"], "--shutdown-grace must be 0 or more seconds"),
        (["--handshake-timeout", "soon"], "--handshake-timeout takes a number of seconds"),
        (["--max-clients", "0"], "--max-clients must be at least 1, not '0'"),
        (["--max-udp-per-client", "-3"], "--max-udp-per-client must be at least 1"),
        (["--workers", "1000"], "--workers must be at most 64, not '1000'"),
        (["--rules", "/nonexistent/rules.toml"], "--rules /nonexistent/rules.toml: No such file"),
        (["--access-log", "/nonexistent/dir/a.log"], "--access-log /nonexistent/dir/a.log: No"),
        (["--external-address", "proxy.example"], "--external-address takes an IP address"),
        (["--udp-interface", "::zz"], "--udp-interface takes an IP address, not '::zz'"),
        (
            ["--outgoing-address", NOT_OURS],
            f"--outgoing-address {NOT_OURS}: cannot bind to it: Cannot assign requested address",
        ),
        (["--udp-interface", NOT_OURS], f"--udp-interface {NOT_OURS}: cannot bind to it"),
        (
            ["--auth", "file:/nonexistent/passwd"],
            "--auth file: /nonexistent/passwd: No such file or directory",
        ),
        (["--auth", "memory:"], "--auth memory: names no user, so every login would fail"),
        (["--auth", "memory:alice"], "--auth memory: argstring must be in format"),
    ],
)
def test_bad_value_stops_the_start_with_one_line(args: list[str], says: str) -> None:
    assert says in refused_start(*args)


def test_port_in_use_is_one_line_naming_the_port() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = refused_start("--port", f"tcp:{port}:interface=127.0.0.1")
    assert line == f"cannot listen on tcp:{port}:interface=127.0.0.1: Address already in use"


def test_privileged_port_is_one_line_naming_the_port() -> None:
    prefix = without_capabilities("net_bind_service")
    line = refused_start("--port", "tcp:1:interface=127.0.0.1", prefix=prefix)
    assert line == (
        "cannot listen on tcp:1:interface=127.0.0.1: Permission denied"
        " (a port below 1024 needs root or CAP_NET_BIND_SERVICE)"
    )


def without_capabilities(*names: str) -> list[str]:
    """
    A command prefix that runs the server without these capabilities when
    the tests run as root (who may bind port 1 and write anywhere), so that
    the kernel refuses what it refuses an ordinary user; none otherwise.
    """
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        message = "setpriv (util-linux) is needed to drop root's capabilities"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return [setpriv, "--bounding-set=" + ",".join(f"-{name}" for name in names), "--"]


def test_unwritable_places_are_one_line(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    prefix = without_capabilities("dac_override", "dac_read_search")
    line = refused_start("--access-log", str(locked / "access.log"), prefix=prefix)
    assert line == f"--access-log {locked}/access.log: Permission denied"
    line = refused_start("--port", f"unix:{locked}/s.sock", prefix=prefix)
    assert (
        line
        == f"--port 'unix:{locked}/s.sock': cannot create a socket in {locked}: permission denied"
    )


def free_on_both() -> int:
    """A port free on 127.0.0.1 and ::1 alike (bounded tries)."""
    for _ in range(20):
        port = free_port("127.0.0.1")
        with socket.socket(socket.AF_INET6) as probe:
            try:
                probe.bind(("::1", port))
            except OSError:
                continue
        return port
    raise AssertionError("no port free on both 127.0.0.1 and ::1")


def test_bare_port_serves_ipv4_and_ipv6_clients(
    start_server, origin: tuple[str, int], blob: Blob
) -> None:
    curl = require_tool("curl")
    port = free_on_both()
    server = start_server("--port", str(port), connect_to=("127.0.0.1", port))
    [listening] = [line for line in server.log().splitlines() if "] listening on " in line]
    assert listening.endswith(
        f"listening on tcp:{port} (IPv4), tcp6:{port}:interface=\\:\\: (IPv6 only)"
    )
    url = f"http://{origin[0]}:{origin[1]}/blob"
    for proxy in (f"127.0.0.1:{port}", f"[::1]:{port}"):
        result = subprocess.run(
            [curl, "-sS", "--max-time", "30", "--socks5-hostname", proxy, url],
            capture_output=True,
            timeout=60,
        )
        assert result.returncode == 0, (proxy, result.stderr)
        assert hashlib.sha256(result.stdout).hexdigest() == blob.sha256
    wait_until(lambda: len(server.session_lines()) == 2, 10, "two session lines")
    clients = " ".join(server.session_lines())
    assert "] session 127.0.0.1:" in clients and "] session [::1]:" in clients, clients
    assert "ffff" not in server.log()


def test_ipv4_client_of_a_dual_stack_socket_is_seen_as_ipv4(
    start_server, echo_server: tuple[str, int], tmp_path: Path
) -> None:
    """
    An explicit C{tcp6:} port on C{::} takes IPv4 clients too (Linux's
    default), as C{::ffff:127.0.0.1}: the allow-list, the rules, the
    per-client limit and the log must see 127.0.0.1.
    """
    assert Path("/proc/sys/net/ipv6/bindv6only").read_text().strip() == "0"
    rules = tmp_path / "rules.toml"
    rules.write_text(
        'default = "allow"\n[[rule]]\nname = "v4 loopback clients"\naction = "deny"\n'
        f'clients = ["127.0.0.1/32"]\nports = [{echo_server[1]}]\n'
    )
    port = free_on_both()
    server = start_server(
        "--port",
        f"tcp6:{port}:interface=\\:\\:",
        "--allow-client",
        "127.0.0.1/32",
        "--rules",
        str(rules),
        "--max-sessions-per-client",
        "1",
        connect_to=("127.0.0.1", port),
    )
    # Allowed (127.0.0.1/32 names no mapped address), and denied by the rule
    # on 127.0.0.1/32: X'02'.
    sock, code = rawsocks.connect(server.address, *echo_server)
    assert code == 2
    sock.close()
    wait_until(lambda: len(server.session_lines()) == 1, 10, "the denied session's end")
    assert "by rule #1 (v4 loopback clients)" in server.log()
    # The per-client limit counts it under 127.0.0.1: while one session is
    # open, a second is closed before negotiating.
    first = socket.create_connection(server.address, timeout=5)
    first.sendall(b"\x05\x01\x00")
    assert rawsocks.recv_exact(first, 2) == b"\x05\x00"
    second = socket.create_connection(server.address, timeout=5)
    second.settimeout(5)
    try:
        second.sendall(b"\x05\x01\x00")
        assert second.recv(2) == b""
    except ConnectionResetError:
        pass
    first.close()
    second.close()
    wait_until(lambda: len(server.session_lines()) == 2, 10, "the sessions' ends")
    log = server.log()
    assert "] refused 127.0.0.1:" in log and "] session 127.0.0.1:" in log, log
    assert "ffff" not in log, log


def test_version_is_socks5twists() -> None:
    from socks5twist import __version__

    result = subprocess.run(
        [*TWISTD, "socks5", "--version"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0
    assert result.stdout.startswith(f"socks5twist {__version__} (Twisted "), result.stdout


def test_help_hides_internals_and_ends_with_examples() -> None:
    result = subprocess.run([*TWISTD, "socks5", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    assert "--worker-listener" not in result.stdout
    assert "memory:alice:secret" in result.stdout and "--help-auth" in result.stdout
    examples = result.stdout[result.stdout.index("\nExamples:\n") :]
    assert "twistd -n socks5 --port 1080" in examples and "socks5twist --port" in examples


def test_socks5twist_command_from_the_wheel(tmp_path: Path, echo_server) -> None:
    """The console script runs the server in the foreground, logs to stdout, writes no pidfile."""
    project = Path(__file__).resolve().parent.parent
    dist, target = tmp_path / "dist", tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "-w", dist, project], check=True, timeout=600)
    [wheel] = dist.glob("socks5twist-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", target, wheel], check=True)
    import twisted

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(target), str(Path(twisted.__file__).parent.parent)])
    command = str(target / "bin" / "socks5twist")
    version = subprocess.run(
        [command, "--version"], capture_output=True, text=True, env=env, timeout=60, cwd=tmp_path
    )
    assert version.returncode == 0 and version.stdout.startswith("socks5twist "), version
    port = free_port()
    stdout = tmp_path / "stdout"
    with stdout.open("wb") as out:
        server = subprocess.Popen(
            [command, "--port", f"tcp:{port}:interface=127.0.0.1"],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=tmp_path,
        )
    try:
        wait_until(
            lambda: "] listening on " in stdout.read_text() or server.poll() is not None,
            30,
            "the command's server to listen",
        )
        assert f"listening on tcp:{port}:interface=127.0.0.1" in stdout.read_text()
        sock, code = rawsocks.connect(("127.0.0.1", port), *echo_server)
        assert code == 0
        sock.close()
        wait_until(lambda: "] session 127.0.0.1:" in stdout.read_text(), 10, "the session line")
        assert not list(tmp_path.glob("*.pid")), "the command wrote a pidfile"
    finally:
        server.terminate()
        server.wait(30)
    assert "Traceback" not in stdout.read_text()


def test_udp_client_of_a_dual_stack_socket_is_served_over_ipv4(
    start_server, udp_echo: dict[int, tuple[str, int]]
) -> None:
    """
    UDP ASSOCIATE from 127.0.0.1 through an explicit C{tcp6:} port on C{::}:
    the relay port is IPv4 (ATYP 1, 127.0.0.1), and the client's datagrams,
    from 127.0.0.1, are the client's.
    """
    port = free_on_both()
    server = start_server("--port", f"tcp6:{port}:interface=\\:\\:", connect_to=("127.0.0.1", port))
    control, relay = associate(server)
    assert relay[0] == "127.0.0.1"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(5)
        client.sendto(udp_header(*udp_echo[4]) + b"through", relay)
        data, source = client.recvfrom(65535)
    assert source == relay
    assert data == udp_header(*udp_echo[4]) + b"echo:" + hashlib.sha256(b"through").digest()
    control.close()
    wait_until(server.session_lines, 10, "the session line")
    [line] = server.session_lines()
    assert "] session 127.0.0.1:" in line and "datagrams=1/1 dropped=0" in line, line
