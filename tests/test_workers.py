"""--workers: several processes serving the same port, supervised by the first."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

from . import rawsocks
from .conftest import SocksServer, socket_inodes, wait_until

Addr = tuple[str, int]
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")


def children_of(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def listening_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":
                inodes.add(fields[9])
    return inodes


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/status").read_text().find("State:\tZ") < 0


def test_workers_share_the_port_reload_restart_and_stop(
    start_server, echo_server: Addr, tmp_path: Path
) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text('default = "allow"\n')
    server: SocksServer = start_server("--workers", "3", "--rules", str(rules))

    def two_workers() -> list[int]:
        found = children_of(server.pid)
        return found if len(found) == 2 else []

    workers = wait_until(two_workers, 15, "two worker processes")
    wait_until(lambda: server.log().count("] listening on ") >= 3, 15, "every process to listen")
    listener = listening_inodes(server.address[1])
    assert len(listener) == 1
    for pid in [server.pid, *workers]:
        assert listener <= socket_inodes(pid), f"{pid} does not hold the listener"
    for _ in range(20):
        sock, code = rawsocks.connect(server.address, *echo_server)
        assert code == 0
        sock.sendall(b"hi")
        assert rawsocks.recv_exact(sock, 2) == b"hi"
        sock.close()
    # Every session has its line, in the first process's log; a worker's
    # lines carry its PID and one timestamp (the worker adds none of its own).
    wait_until(lambda: len(server.session_lines()) >= 20, 10, "twenty session lines")
    worker_lines = [line for line in server.log().splitlines() if "] worker[" in line]
    assert {int(line.split("] worker[")[1].split("]")[0]) for line in worker_lines} == set(workers)
    for line in worker_lines:
        assert len(TIMESTAMP.findall(line)) == 1, line
        assert re.match(r"\S+ \[[^]]+\] worker\[\d+\] \S", line), line
    # SIGHUP reaches every process.
    os.kill(server.pid, signal.SIGHUP)
    wait_until(lambda: server.log().count("reloaded") >= 3, 10, "three reloads")
    # A worker that dies is replaced.
    os.kill(workers[0], signal.SIGKILL)
    wait_until(lambda: "ended unexpectedly" in server.log(), 10, "the supervisor to notice")
    replaced = wait_until(
        lambda: [p for p in children_of(server.pid) if p not in workers], 10, "a new worker"
    )
    # SIGTERM stops them all.
    server.process.send_signal(signal.SIGTERM)
    server.process.wait(20)
    deadline = time.monotonic() + 10
    for pid in [*workers[1:], *replaced]:
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(pid), f"worker {pid} outlived the server"


def test_sighup_with_nothing_to_reread_stops_no_process(start_server, echo_server: Addr) -> None:
    """
    C{systemctl reload} of a server without C{--rules}, C{--auth file:} or
    C{--access-log}: every process goes on.  Without a handler, SIGHUP's
    default action ended the worker (restarted a second later) and, without
    C{--workers}, the server itself, which systemd counts as a clean exit
    (C{Restart=on-failure} then leaves it down).
    """
    server: SocksServer = start_server("--workers", "2")
    [worker] = wait_until(lambda: children_of(server.pid), 15, "the worker process")
    wait_until(lambda: server.log().count("] listening on ") >= 2, 15, "both processes to listen")
    os.kill(server.pid, signal.SIGHUP)
    said = "SIGHUP: nothing to reread (no --rules, --auth file: or --access-log)"
    wait_until(lambda: server.log().count(said) >= 2, 10, "both processes to say so")
    time.sleep(0.5)
    assert server.process.poll() is None
    assert alive(worker)
    assert "ended unexpectedly" not in server.log()
    sock, code = rawsocks.connect(server.address, *echo_server)
    assert code == 0
    sock.close()


def test_sighup_leaves_a_lone_server_running(start_server, echo_server: Addr) -> None:
    server: SocksServer = start_server()
    os.kill(server.pid, signal.SIGHUP)
    wait_until(lambda: "] SIGHUP: nothing to reread" in server.log(), 10, "the server to say so")
    assert server.process.poll() is None
    sock, code = rawsocks.connect(server.address, *echo_server)
    assert code == 0
    sock.close()
