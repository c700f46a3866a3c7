"""
What a Kerberised upstream hop (C{socks5+gssapi://}) costs the proxy that
routes through it, and the upstream.

    python bench/gssroute.py [--megabytes 128] [--rounds 3] [--json FILE]

Starts a real MIT KDC (the tests' L{tests.kerberos}, on loopback), an
upstream C{twistd -n socks5 --gssapi}, and a front C{twistd -n socks5}
whose only rule routes through it, its ticket cache holding alice's
ticket; for comparison in the same run, the front routing through a plain
C{socks5://} hop to an upstream without authentication.  For each
configuration it downloads and uploads C{--megabytes} through one tunnel
(a plain SOCKS5 client, no authentication, to the front; the destination a
loopback sink/source) and reports each proxy's CPU seconds per GiB (from
/proc) and the throughput.  Each configuration runs C{--rounds} times in
rotation; the medians are shown.  Every process started here is stopped
here by its PID; nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))

from gsslevels import CHUNK, Peer, Server, cpu_seconds, report  # type: ignore[import-not-found]  # noqa: E402

from tests import rawsocks  # noqa: E402
from tests.kerberos import Realm  # noqa: E402

LEVELS = ("clear", "integrity", "confidentiality")


def run_once(
    front: Server, upstream: Server, size: int, download: bool
) -> tuple[float, float, float]:
    """One transfer through a fresh tunnel: (front CPU s, upstream CPU s, wall s)."""
    peer = Peer(size, send=download)
    host, port = peer.address
    sock, code = rawsocks.connect(("127.0.0.1", front.port), host, port, timeout=60)
    assert code == 0, code
    pids = (front.process.pid, upstream.process.pid)
    before, t0 = [cpu_seconds(pid) for pid in pids], time.perf_counter()
    with sock:
        if download:
            got = 0
            while got < size:
                data = sock.recv(1 << 20)
                assert data, f"closed after {got} bytes"
                got += len(data)
        else:
            left = size
            while left > 0:
                sock.sendall(CHUNK)
                left -= len(CHUNK)
            sock.shutdown(socket.SHUT_WR)
            peer.thread.join(120)
            assert peer.received == size, (peer.received, size)
        wall = time.perf_counter() - t0
        after = [cpu_seconds(pid) for pid in pids]
    peer.thread.join(30)
    return after[0] - before[0], after[1] - before[1], wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--megabytes", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json")
    options = parser.parse_args()
    size = options.megabytes << 20
    gib = size / (1 << 30)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "realm").mkdir()
        realm = Realm(work / "realm")
        realm.start()
        try:
            env = {**realm.env, "KRB5CCNAME": f"FILE:{realm.kinit('alice', work / 'alice.cc')}"}
            gss = [
                "--gssapi",
                f"--gssapi-keytab={realm.keytab_path}",
                "--gssapi-protection=clear,integrity,confidentiality",
            ]
            configs: dict[str, tuple[list[str], str]] = {
                "socks5:// hop": ([], "socks5://127.0.0.1:{port}")
            }
            for level in LEVELS:
                url = "socks5+gssapi://localhost:{port}?protection=" + level
                configs[f"socks5+gssapi {level}"] = (gss, url)
            results: dict[str, dict[str, list[float]]] = {name: {} for name in configs}
            names = list(configs)
            for round_ in range(options.rounds):
                for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
                    args, url = configs[name]
                    n = len(list(work.iterdir()))
                    upstream = Server(args, realm.env, work / f"{n}-upstream.log")
                    rules = work / f"{n}-rules.toml"
                    hop = url.format(port=upstream.port)
                    rules.write_text(
                        f'default = "deny"\n[[rule]]\naction = "allow"\nvia = ["{hop}"]\n'
                    )
                    try:
                        front = Server(["--rules", str(rules)], env, work / f"{n}-front.log")
                        try:
                            for direction in ("download", "upload"):
                                ours, theirs, wall = run_once(
                                    front, upstream, size, direction == "download"
                                )
                                columns = results[name]
                                columns.setdefault(f"{direction} front s/GiB", []).append(
                                    ours / gib
                                )
                                columns.setdefault(f"{direction} upstream s/GiB", []).append(
                                    theirs / gib
                                )
                                columns.setdefault(f"{direction} MiB/s", []).append(
                                    size / (1 << 20) / wall
                                )
                        finally:
                            front.stop()
                    finally:
                        upstream.stop()
            report(results, options.json, 24)
        finally:
            realm.stop()


if __name__ == "__main__":
    main()
