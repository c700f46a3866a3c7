"""
The systemd units in C{contrib/}: they parse (C{systemd-analyze verify}),
their C{ExecStart} options start a server that serves curl, and the
socket-activated start works for real under C{systemd-socket-activate}
(which runs without systemd as PID 1), dual-stack socket included.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import TWISTD, Blob, free_port, require_tool, wait_until

PROJECT = Path(__file__).resolve().parent.parent
CONTRIB = PROJECT / "contrib"
UNITS = ["socks5twist.service", "socks5twist.socket", "socks5twist-activated.service"]
INSTALLED_TWISTD = "/opt/socks5twist/.venv/bin/twistd"


def unit(name: str) -> dict[str, dict[str, list[str]]]:
    """The sections of a unit file and each key's values, in order."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for number, line in enumerate((CONTRIB / name).read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        assert not line.endswith("\\"), f"{name}:{number}: continuation lines are not used"
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None, f"{name}:{number}: not KEY=VALUE in a section"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def exec_start(name: str) -> list[str]:
    """The unit's ExecStart, as argv: the installed twistd, then its options."""
    [line] = unit(name)["Service"]["ExecStart"]
    argv = shlex.split(line)
    assert argv[0] == INSTALLED_TWISTD
    return argv


def replace_port(argv: list[str], port: str) -> list[str]:
    """C{argv} with the value of its one C{--port} replaced."""
    [index] = [i for i, arg in enumerate(argv) if arg == "--port"]
    return [*argv[: index + 1], port, *argv[index + 2 :]]


def environment() -> dict[str, str]:
    """The environment for a server that must import this checkout's code."""
    path = os.pathsep.join(p for p in (str(PROJECT), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path}


def dual_stack_port() -> int:
    """A port free on both 0.0.0.0 and :: (what ListenStream=PORT binds)."""
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.bind(("::", 0))
        return int(s.getsockname()[1])


class Process:
    """A process this test started, its output in a file; stopped by its PID."""

    def __init__(self, argv: list[str], output: Path, env: dict[str, str] | None = None) -> None:
        self.output = output
        with output.open("wb") as sink:
            self.process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                cwd=output.parent,
                env=env if env is not None else environment(),
            )

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def wait_for(self, what: str, timeout: float = 20) -> None:
        def seen() -> bool:
            if what in self.text():
                return True
            if self.process.poll() is not None:
                raise AssertionError(f"exited before {what!r}:\n{self.text()}")
            return False

        wait_until(seen, timeout, repr(what))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def socket_activate(options: list[str], listen: str, argv: list[str]) -> list[str]:
    """
    C{systemd-socket-activate} listening on C{listen} and starting this
    checkout's twistd with C{argv}'s options.  It passes the child only the
    environment it is told to (hence C{-E PYTHONPATH}), and sets
    C{LISTEN_FDNAMES}, which Twisted needs, only with C{--fdname}.
    """
    activate = require_tool("systemd-socket-activate")
    pythonpath = environment()["PYTHONPATH"]
    return [activate, *options, "-E", f"PYTHONPATH={pythonpath}", "-l", listen, *TWISTD, *argv[1:]]


@pytest.fixture
def processes() -> Iterator[list[Process]]:
    started: list[Process] = []
    yield started
    for process in started:
        process.stop()
    for process in started:
        assert "Traceback" not in process.text(), process.text()


def curl_through(proxy: str, origin: tuple[str, int], blob: Blob) -> None:
    """Fetch the origin's blob through the SOCKS5 proxy at C{proxy} with curl."""
    curl = require_tool("curl")
    url = f"http://{origin[0]}:{origin[1]}/blob"
    result = subprocess.run(
        [curl, "-sS", "--max-time", "30", "--socks5-hostname", proxy, url],
        capture_output=True,
        timeout=40,
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    assert hashlib.sha256(result.stdout).hexdigest() == blob.sha256


def test_unit_files_verify(tmp_path: Path) -> None:
    """C{systemd-analyze verify} finds nothing to say about the units."""
    analyze = require_tool("systemd-analyze")
    for name in UNITS:
        # verify checks that ExecStart's program exists: point it at one that does.
        text = (CONTRIB / name).read_text().replace(INSTALLED_TWISTD, sys.executable)
        (tmp_path / name).write_text(text)
    result = subprocess.run(
        [analyze, "verify", "--man=no", *(str(tmp_path / name) for name in UNITS)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SYSTEMD_LOG_COLOR": "0"},
    )
    output = result.stdout + result.stderr
    ours = [line for line in output.splitlines() if any(name in line for name in UNITS)]
    assert result.returncode == 0 and ours == [], output


def test_unit_files_fit_together() -> None:
    socket_unit = unit("socks5twist.socket")["Socket"]
    assert socket_unit["ListenStream"] == ["1080"]
    assert socket_unit["Accept"] == ["no"]
    [activated] = socket_unit["Service"]
    assert activated == "socks5twist-activated.service" and (CONTRIB / activated).exists()
    assert unit(activated)["Unit"]["Requires"] == ["socks5twist.socket"]
    assert "--port" in exec_start("socks5twist.service")
    assert "systemd:domain=INET6:index=0" in exec_start(activated)
    for name in ("socks5twist.service", activated):
        service = unit(name)["Service"]
        assert service["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
        assert service["Type"] == ["simple"]
        assert exec_start(name)[1:4] == ["--nodaemon", "--pidfile=", "socks5"]


def test_plain_unit_options_serve_curl(
    tmp_path: Path, origin: tuple[str, int], blob: Blob, processes: list[Process]
) -> None:
    """The plain unit's ExecStart, on a free loopback port instead of 1080."""
    port = free_port()
    argv = replace_port(exec_start("socks5twist.service"), f"tcp:{port}:interface=127.0.0.1")
    server = Process([*TWISTD, *argv[1:]], tmp_path / "twistd.out")
    processes.append(server)
    server.wait_for("] listening on ")
    curl_through(f"127.0.0.1:{port}", origin, blob)
    wait_until(lambda: "session 127.0.0.1:" in server.text(), 5, "the session line")


@pytest.mark.parametrize(
    ("listen", "description", "clients"),
    [
        # The socket unit as shipped: ListenStream=1080, one dual-stack AF_INET6 socket.
        ("{port}", None, ["127.0.0.1", "[::1]"]),
        # The same socket described as INET: served as the AF_INET6 socket it is.
        ("{port}", "systemd:domain=INET:index=0", ["127.0.0.1", "[::1]"]),
        # ListenStream=127.0.0.1:PORT, an AF_INET socket.
        ("127.0.0.1:{port}", "systemd:domain=INET:index=0", ["127.0.0.1"]),
    ],
    ids=["unit-dual-stack", "inet-on-dual-stack", "inet"],
)
def test_socket_activated_start_serves_curl(
    tmp_path: Path,
    origin: tuple[str, int],
    blob: Blob,
    processes: list[Process],
    listen: str,
    description: str | None,
    clients: list[str],
) -> None:
    argv = exec_start("socks5twist-activated.service")
    if description is not None:
        argv = replace_port(argv, description)
    port = dual_stack_port()
    [name] = unit("socks5twist.socket")["Socket"]["FileDescriptorName"]
    server = Process(
        socket_activate([f"--fdname={name}"], listen.format(port=port), argv),
        tmp_path / "activated.out",
    )
    processes.append(server)
    server.wait_for("Listening on ")
    for client in clients:
        curl_through(f"{client}:{port}", origin, blob)  # the first starts twistd
    for client in clients:
        # An IPv4 client of the dual-stack socket is itself, not ::ffff:... nor garbage.
        server.wait_for(f"] session {client}:", 5)
    text = server.text()
    assert "] listening on systemd:" in text
    assert "not in the allowed client networks" not in text


@pytest.mark.parametrize(
    ("options", "extra", "error"),
    [
        ([], [], "systemd passed no such socket to this process"),
        (["--datagram", "--fdname=socks5"], [], "descriptor 3 is not a listening stream socket"),
        # Without the check, the server started and its worker, which cannot
        # have the socket, failed and was restarted every second for ever.
        (["--fdname=socks5"], ["--workers", "2"], "a socket systemd passed is not shared"),
    ],
    ids=["no-fdnames", "datagram-socket", "with-workers"],
)
def test_socket_activation_mistakes_stop_with_one_line(
    tmp_path: Path, processes: list[Process], options: list[str], extra: list[str], error: str
) -> None:
    port = free_port()
    argv = replace_port(exec_start("socks5twist-activated.service"), "systemd:domain=INET:index=0")
    argv += extra
    server = Process(
        socket_activate(options, f"127.0.0.1:{port}", argv), tmp_path / "activated.out"
    )
    processes.append(server)
    server.wait_for("Listening on ")
    kind = socket.SOCK_DGRAM if "--datagram" in options else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, kind) as poke:  # the first packet starts twistd
        poke.connect(("127.0.0.1", port))
        poke.send(b"x")
        assert server.process.wait(20) != 0
    text = server.text()
    [line] = [line for line in text.splitlines() if "twistd socks5: error:" in line]
    assert line.startswith(f"twistd socks5: error: --port 'systemd:domain=INET:index=0': {error}")
