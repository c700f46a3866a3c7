"""
What GSSAPI's protection levels cost the server (RFC 1961 per-message protection).

    python bench/gsslevels.py [--megabytes 256] [--rounds 3] [--json FILE]

Starts a real MIT KDC (the tests' L{tests.kerberos}, on loopback), then
C{twistd -n socks5 --gssapi} and, for comparison in the same run, the same
server without authentication: the default (splice where it can) and
C{--no-splice} (the stream relay, which every wrapped tunnel uses).  For each
configuration it downloads and uploads C{--megabytes} through one tunnel
(the destination a loopback sink/source here), with the RFC 1961 client of
the tests (python-gssapi, unwrapping in C) on the other side, and reports
the server's CPU seconds per GiB (from /proc: what the proxy itself spent)
and the wall-clock throughput (bounded by the Python client as much as by
the server: read it as a floor).  Each configuration runs C{--rounds} times
in rotation; the medians are shown.  Every process started here is stopped
here by its PID; nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import rfc1961  # noqa: E402
from tests.conftest import TWISTD, free_port, wait_until  # noqa: E402
from tests.kerberos import Realm  # noqa: E402

CHUNK = bytes(range(256)) * 256  # 64 KiB


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Server:
    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.log = log
        command = [*TWISTD, "-n", "--pidfile=", f"--logfile={log}", "socks5"]
        command += ["--port", f"tcp:{self.port}:interface=127.0.0.1", *args]
        self.process = subprocess.Popen(
            command,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        wait_until(lambda: log.exists() and "] listening on " in log.read_text(), 20, "listening")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


class Peer:
    """A destination: sends C{size} bytes to whoever connects, or reads them all."""

    def __init__(self, size: int, send: bool) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.size, self.send = size, send
        self.received = 0
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.sock.getsockname()
        return host, port

    def serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            if self.send:
                left = self.size
                while left > 0:
                    conn.sendall(CHUNK[: min(left, len(CHUNK))])
                    left -= len(CHUNK)
            else:
                while data := conn.recv(1 << 20):
                    self.received += len(data)
        self.sock.close()


def run_once(server: Server, level: int | None, size: int, download: bool) -> tuple[float, float]:
    """One transfer through a fresh tunnel: (server CPU seconds, wall seconds)."""
    peer = Peer(size, send=download)
    if level is None:
        client = rfc1961.Client(("127.0.0.1", server.port), timeout=60)
        assert client.greet(b"\x00") == 0
    else:
        client = rfc1961.Client(("127.0.0.1", server.port), timeout=60)
        assert client.greet() == 1
        client.establish()
        assert client.ask_level(level) == level
    assert client.connect(*peer.address)[1] == 0
    cpu0, t0 = cpu_seconds(server.process.pid), time.perf_counter()
    if download:
        got = 0
        while got < size:
            n = min(1 << 20, size - got)
            got += len(client.recv(n))
    else:
        left = size
        while left > 0:
            client.send(CHUNK)
            left -= len(CHUNK)
        client.sock.shutdown(socket.SHUT_WR)
        peer.thread.join(120)
        assert peer.received == size, (peer.received, size)
    wall = time.perf_counter() - t0
    cpu = cpu_seconds(server.process.pid) - cpu0
    client.close()
    peer.thread.join(30)
    return cpu, wall


def report(results: dict[str, dict[str, list[float]]], json_path: str | None, width: int) -> None:
    """The median of each column per configuration, printed (and written as JSON)."""
    medians = {n: {k: statistics.median(v) for k, v in r.items()} for n, r in results.items()}
    keys = list(next(iter(medians.values())))
    print(f"{'configuration':28}" + "".join(f"{k:>{width}}" for k in keys))
    for name, row in medians.items():
        print(f"{name:28}" + "".join(f"{row[k]:>{width}.2f}" for k in keys))
    if json_path:
        Path(json_path).write_text(json.dumps(medians, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--megabytes", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json")
    options = parser.parse_args()
    size = options.megabytes << 20
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "realm").mkdir()
        realm = Realm(work / "realm")
        realm.start()
        try:
            cache = realm.kinit("alice", work / "alice.cc")
            env = {**realm.env, "KRB5CCNAME": f"FILE:{cache}"}
            os.environ.update(env)
            gss = [
                "--gssapi",
                f"--gssapi-keytab={realm.keytab_path}",
                "--gssapi-protection=clear,integrity,confidentiality",
            ]
            configs = {
                "no auth (default: splice)": ([], None),
                "no auth --no-splice": (["--no-splice"], None),
                "gssapi clear": (gss, rfc1961.CLEAR),
                "gssapi integrity": (gss, rfc1961.INTEGRITY),
                "gssapi confidentiality": (gss, rfc1961.CONFIDENTIALITY),
            }
            results: dict[str, dict[str, list[float]]] = {name: {} for name in configs}
            names = list(configs)
            for round_ in range(options.rounds):
                order = names[round_ % len(names) :] + names[: round_ % len(names)]
                for name in order:
                    args, level = configs[name]
                    server = Server(args, env, work / f"{len(os.listdir(work))}.log")
                    try:
                        for direction in ("download", "upload"):
                            cpu, wall = run_once(server, level, size, direction == "download")
                            gib = size / (1 << 30)
                            results[name].setdefault(f"{direction} cpu s/GiB", []).append(cpu / gib)
                            results[name].setdefault(f"{direction} MiB/s", []).append(
                                size / (1 << 20) / wall
                            )
                    finally:
                        server.stop()
            report(results, options.json, 22)
        finally:
            realm.stop()


if __name__ == "__main__":
    main()
