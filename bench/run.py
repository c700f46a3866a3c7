"""
The socks5twist benchmark: socks5twist beside its peers, in one run.

    python bench/run.py [--rounds 3] [--pairs 7] [--quick] [--only NAME] [--json FILE]
                        [--baseline REF]

Measures, for a direct connection (the limit) and for each SOCKS5 server:
throughput (1 and 8 streams, upload and download, 512 MiB per test), latency
(1-byte and 1 KiB ping-pong, p50 and p99), complete sessions per second
(greeting + CONNECT + one echo + close, at concurrency 1 and 32), and memory
per idle tunnel (RSS growth of the server's processes with 1000 open
tunnels).  The load generator is a C program (bench/loadgen.c, built here
with the system's C compiler) that verifies every byte it receives.

Every server is started fresh for each round, the servers' order rotates from
round to round, and the table shows the median over rounds and ratios to the
direct connection and to each peer.  Then the figures closest to the peers'
(sessions/s at concurrency 32, 1-byte p50 latency) are measured again in
--pairs alternations of socks5twist, Dante and pproxy, each right after the
other, and a second table gives the ratio per alternation (--rounds 0: the
alternations alone).  Everything runs on 127.0.0.1, every process started
here is stopped here by its PID, and every step is bounded in bytes and
time.  Peers that are not installed are left out, with a note:
Debian's microsocks and dante-server, PyPI's pproxy.

socks5twist is measured as a user runs it (C{twistd -n socks5
--logfile=FILE}: each session's line through Twisted's log) and with
C{--access-log}; the C{--workers 2} and C{--no-splice} variants write an
access log too.  C{--baseline REF} also measures the socks5twist of an earlier
commit (C{git archive REF}), both ways, in the same rounds and alternations:
a change's before and after, side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
MiB = 1 << 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port} after {timeout}s")


def tree_rss_kib(pid: int) -> int:
    """RSS of a process and all its descendants (Dante and --workers fork)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
            for task in os.listdir(f"/proc/{p}/task"):
                children = Path(f"/proc/{p}/task/{task}/children").read_text().split()
                todo.extend(int(c) for c in children)
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def tree_cpu_seconds(pid: int) -> float:
    """
    User + system CPU time of a process and all its descendants, living
    ones only (Dante forks a process per client: its exited children's time
    is counted in their parent's cutime/cstime once reaped, which is added).
    """
    tick = os.sysconf("SC_CLK_TCK")
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            # utime, stime, cutime, cstime: fields 14-17 of stat(5).
            total += sum(int(f) for f in fields[11:15])
            for task in os.listdir(f"/proc/{p}/task"):
                children = Path(f"/proc/{p}/task/{task}/children").read_text().split()
                todo.extend(int(c) for c in children)
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total / tick


class Peer:
    """A server to measure: how to start it on a port."""

    def __init__(
        self,
        name: str,
        command: Callable[[int, Path], list[str]] | None,
        idle: bool = True,
        bulk: bool = True,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.command = command
        self.cwd = cwd  # where it starts (a checkout's socks5twist is imported from there)
        self.idle = idle  # measure memory per idle tunnel
        self.bulk = bulk  # measure throughput
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self, workdir: Path) -> None:
        if self.command is None:
            return
        self.port = free_port()
        self.proc = subprocess.Popen(
            self.command(self.port, workdir),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            cwd=self.cwd,
        )
        wait_listening(self.port, self.proc)
        time.sleep(0.3)

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)
        self.proc = None

    @property
    def proxy_args(self) -> list[str]:
        return [] if self.command is None else ["--proxy", f"127.0.0.1:{self.port}"]


LIMITS = """default = "allow"

[[limit]]
name = "never reached"
bandwidth = "100GiB/s"
session_bandwidth = "100GiB/s"
sessions = 1000000
"""


def twistd(
    *extra: str, access_log: bool = True, limits: bool = False
) -> Callable[[int, Path], list[str]]:
    """
    How to start socks5twist.  Every session's line is written: by default
    (C{access_log=False}) through Twisted's log to the log file, as a user
    runs C{twistd -n socks5 --logfile=FILE}; with C{access_log}, to an
    access log, as a busy server's operator would (see the README's Logs).
    The peers log no sessions.  (twistd is started with C{-c}, so the
    socks5twist of the directory it starts in is imported first.)
    """

    def command(port: int, workdir: Path) -> list[str]:
        tuned = ["--access-log", str(workdir / f"access-{port}.log")] if access_log else []
        if limits:
            rules = workdir / f"limits-{port}.toml"
            rules.write_text(LIMITS)
            tuned += ["--rules", str(rules)]
        return [
            sys.executable, "-c",
            "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()",
            "-n", "--pidfile=", f"--logfile={workdir / f'socks5twist-{port}.log'}",
            "socks5", "--port", f"tcp:{port}:interface=127.0.0.1", *tuned, *extra,
        ]  # fmt: skip

    return command


def dante(port: int, workdir: Path) -> list[str]:
    conf = workdir / f"danted-{port}.conf"
    conf.write_text(
        f"logoutput: /dev/null\ninternal: 127.0.0.1 port = {port}\nexternal: 127.0.0.1\n"
        "clientmethod: none\nsocksmethod: none\nuser.privileged: root\n"
        "user.unprivileged: nobody\n"
        "client pass { from: 127.0.0.0/8 to: 0.0.0.0/0 }\n"
        "socks pass { from: 127.0.0.0/8 to: 0.0.0.0/0 }\n"
    )
    return [shutil.which("danted") or "danted", "-f", str(conf)]


def peers(loadgen: str, baseline: Path | None = None) -> tuple[list[Peer], list[str]]:
    found = [
        Peer("direct", None, idle=False),
        # As a user runs it: session lines through Twisted's log.
        Peer("socks5twist", twistd(access_log=False)),
        Peer("socks5twist --access-log", twistd()),
        Peer("socks5twist --access-log --workers 2", twistd("--workers", "2")),
        Peer("socks5twist --access-log --no-splice", twistd("--no-splice")),
        # Traffic control configured but never reached: what limits cost
        # when they do not bite (a bandwidth bucket charged per chunk, a
        # place under a session limit per request).
        Peer("socks5twist --limits", twistd(access_log=False, limits=True)),
    ]
    if baseline is not None:
        # Another checkout of socks5twist (an earlier commit), measured in the
        # same run: a change's before and after, side by side.
        found += [
            Peer("baseline", twistd(access_log=False), cwd=baseline),
            Peer("baseline --access-log", twistd(), cwd=baseline),
        ]
    found += [
        Peer(
            "threads", lambda port, _: [sys.executable, str(HERE / "threaded_socks.py"), str(port)]
        ),
    ]
    # The least a Python relay can do per session and per round trip (no
    # checks, logs, timeouts or flow control): what any server written in
    # Python could reach here.  It has no flow control, so no bulk figures.
    found.append(
        Peer(
            "python floor",
            lambda port, _: [sys.executable, str(HERE / "floor.py"), str(port), "--loop", "epoll"],
            idle=False,
            bulk=False,
        )
    )
    missing = []
    pproxy = shutil.which("pproxy") or str(Path(sys.executable).with_name("pproxy"))
    if Path(pproxy).exists():
        found.append(Peer("pproxy", lambda port, _: [pproxy, "-l", f"socks5://127.0.0.1:{port}"]))
    else:
        missing.append("pproxy (pip install pproxy)")
    if shutil.which("microsocks"):
        found.append(
            Peer("microsocks", lambda port, _: ["microsocks", "-i", "127.0.0.1", "-p", str(port)])
        )
    else:
        missing.append("microsocks (apt-get install microsocks)")
    if shutil.which("danted") and os.geteuid() == 0:
        found.append(Peer("dante", dante))
    else:
        missing.append("dante (apt-get install dante-server; runs as root here)")
    return found, missing


def run_loadgen(loadgen: str, *args: str, timeout: float = 120) -> dict[str, float]:
    result = subprocess.run([loadgen, *args], capture_output=True, timeout=timeout)
    line = result.stdout.decode().strip().splitlines()[-1] if result.stdout.strip() else "{}"
    data: dict[str, float] = json.loads(line)
    if result.returncode != 0 or data.get("errors"):
        raise RuntimeError(
            f"loadgen {' '.join(args)} failed: {result.stderr.decode()[-300:]} {line}"
        )
    return data


def latency(loadgen: str, common: list[str], size: int, quick: bool) -> dict[str, float]:
    """p50 and p99 of a ping-pong of C{size}-byte messages."""
    count = "2000" if quick else "5000"
    r = run_loadgen(loadgen, "latency", *common, "--size", str(size), "--count", count)
    label = "1 B" if size == 1 else "1 KiB"
    return {f"latency {label} p50 (us)": r["p50_us"], f"latency {label} p99 (us)": r["p99_us"]}


def sessions(
    loadgen: str, common: list[str], concurrency: int, quick: bool, pid: int | None = None
) -> dict[str, float]:
    """
    Complete sessions per second at C{concurrency}, and, given the server's
    C{pid}, the server's CPU time per session (user + system, its whole
    process tree): on a shared machine, where sessions per second swing
    with the neighbours' load, the CPU a session costs swings much less.
    """
    seconds = 1 if quick else 2
    before = tree_cpu_seconds(pid) if pid is not None else 0.0
    r = run_loadgen(
        loadgen, "sessions", *common, "--concurrency", str(concurrency), "--seconds", str(seconds)
    )
    out = {f"sessions/s, concurrency {concurrency}": r["sessions_per_s"]}
    if pid is not None and r["sessions_per_s"] > 0:
        spent = tree_cpu_seconds(pid) - before
        out[f"server CPU per session, concurrency {concurrency} (us)"] = (
            spent / r.get("sessions", r["sessions_per_s"] * seconds) * 1e6
        )
    return out


def measure(peer: Peer, loadgen: str, target: str, quick: bool, workdir: Path) -> dict[str, float]:
    """Every figure for one peer, on a fresh server."""
    out: dict[str, float] = {}
    peer.start(workdir)
    try:
        common = [*peer.proxy_args, "--target", target]
        total = (64 if quick else 512) * MiB
        for streams in (1, 8) if peer.bulk else ():
            for direction in ("up", "down"):
                r = run_loadgen(
                    loadgen,
                    "throughput",
                    *common,
                    "--streams",
                    str(streams),
                    "--bytes",
                    str(total // streams),
                    "--dir",
                    direction,
                )
                out[f"throughput {streams}x {direction} (MB/s)"] = r["mb_per_s"]
        for size in (1, 1024):
            out.update(latency(loadgen, common, size, quick))
        for concurrency in (1, 32):
            out.update(sessions(loadgen, common, concurrency, quick))
    finally:
        peer.stop()
    if peer.idle:
        # On a server of its own: one that has just moved gigabytes holds
        # freed memory it would reuse, and would seem to need nothing.
        peer.start(workdir)
        try:
            common = [*peer.proxy_args, "--target", target]
            out["memory per idle tunnel (KiB)"] = idle_memory(
                peer, loadgen, common, 200 if quick else 1000
            )
        finally:
            peer.stop()
    return out


def idle_memory(peer: Peer, loadgen: str, common: list[str], count: int) -> float:
    assert peer.proc is not None
    time.sleep(0.5)
    # A few tunnels first, so that start-up allocations are not counted.
    warm = subprocess.Popen(
        [loadgen, "idle", *common, "--count", "20"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert warm.stdout is not None and warm.stdin is not None
    warm.stdout.readline()
    warm.stdin.close()
    warm.wait(30)
    time.sleep(0.5)
    before = tree_rss_kib(peer.proc.pid)
    holder = subprocess.Popen(
        [loadgen, "idle", *common, "--count", str(count)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdin is not None
        line = holder.stdout.readline().decode()
        opened = json.loads(line)["opened"]
        if opened != count:
            raise RuntimeError(f"only {opened} of {count} idle tunnels opened")
        time.sleep(1.0)
        after = tree_rss_kib(peer.proc.pid)
        holder.stdin.close()
        holder.wait(30)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(10)
    return (after - before) / count


# The figures whose targets sit closest to the peers': measured again in
# short alternations, each peer right after the other, so that the machine's
# slow swings (other tenants) fall on both sides of each ratio.  For latency
# the ratio is of the p50s themselves: "adds no more over direct than Dante"
# is "a p50 no higher than Dante's" under the same conditions, and a direct
# figure taken at another moment would only add its own noise.
PAIRED_FIGURES = (
    "sessions/s, concurrency 32",
    "server CPU per session, concurrency 32 (us)",
    "latency 1 B p50 (us)",
)
PAIRED_OURS = (
    "socks5twist",
    "socks5twist --access-log",
    "socks5twist --limits",
    "socks5twist --access-log --workers 2",
    "baseline",
    "baseline --access-log",
)
PAIRED_PEERS = ("dante", "pproxy")
# The README's targets for those figures: (figure, peer) -> the ratio to reach
# (sessions: at least this; latency: at most this).
PAIRED_TARGETS = {
    ("sessions/s, concurrency 32", "dante"): 1.0,
    ("sessions/s, concurrency 32", "pproxy"): 2.0,
    ("latency 1 B p50 (us)", "dante"): 1.0,
}


def paired(
    candidates: list[Peer], loadgen: str, target: str, pairs: int, quick: bool, workdir: Path
) -> dict[str, list[dict[str, float]]]:
    """
    C{pairs} alternations of socks5twist and the peers its closest targets
    name: in each, every server is started fresh and measured for the
    figures of L{PAIRED_FIGURES} (with the rounds' tests: L{latency},
    L{sessions}), one right after the other, in an order that rotates.  One
    dictionary per alternation (empty where a measurement failed).
    """
    subjects = [p for p in candidates if p.name in PAIRED_OURS + PAIRED_PEERS]
    names = {p.name for p in subjects}
    if pairs <= 0 or not (names & set(PAIRED_OURS) and names & set(PAIRED_PEERS)):
        return {}  # nothing to pair
    out: dict[str, list[dict[str, float]]] = {p.name: [] for p in subjects}
    for i in range(pairs):
        shift = i % len(subjects)
        for peer in subjects[shift:] + subjects[:shift]:
            try:
                peer.start(workdir)
                common = [*peer.proxy_args, "--target", target]
                pid = peer.proc.pid if peer.proc is not None else None
                figures = {
                    **latency(loadgen, common, 1, quick),
                    **sessions(loadgen, common, 32, quick, pid),
                }
                out[peer.name].append({m: figures[m] for m in PAIRED_FIGURES if m in figures})
            except Exception as e:
                # Left out of the ratios: each compares figures taken side by side.
                print(f"bench: alternation {i + 1}, {peer.name}: {e}", file=sys.stderr)
                out[peer.name].append({})
            finally:
                peer.stop()
        print(f"bench: alternation {i + 1}/{pairs}", file=sys.stderr)
    return out


def paired_table(results: dict[str, list[dict[str, float]]]) -> str:
    """
    The ratio of each of our servers to each peer, alternation by
    alternation: median, lowest and highest, and in how many alternations
    the target (L{PAIRED_TARGETS}) was reached.
    """
    ours = [n for n in PAIRED_OURS if n in results]
    peers_ = [n for n in PAIRED_PEERS if n in results]
    columns = [(o, p) for o in ours for p in peers_]
    if not columns:
        return ""
    lines = [
        "| figure | " + " | ".join(f"{o} x {p}" for o, p in columns) + " |",
        "|---" * (len(columns) + 1) + "|",
    ]
    for metric in PAIRED_FIGURES:
        cells = []
        for o, p in columns:
            ratios = [
                mine[metric] / theirs[metric]
                for mine, theirs in zip(results[o], results[p], strict=True)
                if theirs.get(metric) and metric in mine
            ]
            if not ratios:
                cells.append("—")
                continue
            text = f"{statistics.median(ratios):.2f}x [{min(ratios):.2f}-{max(ratios):.2f}]"
            goal = PAIRED_TARGETS.get((metric, p))
            if goal is not None:
                lower_is_better = metric.startswith(("latency", "server CPU"))
                held = sum(1 for r in ratios if (r <= goal if lower_is_better else r >= goal))
                sense = "<=" if lower_is_better else ">="
                text += f"; {sense} {goal:g}x in {held}/{len(ratios)}"
            cells.append(text)
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def build_loadgen(workdir: Path) -> str:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        sys.exit("bench: a C compiler is needed for the load generator (apt-get install gcc)")
    out = workdir / "loadgen"
    subprocess.run([cc, "-O2", "-pthread", "-o", str(out), str(HERE / "loadgen.c")], check=True)
    return str(out)


def table(results: dict[str, list[dict[str, float]]]) -> str:
    names = list(results)
    metrics: list[str] = []
    for n in names:
        for r in results[n]:
            for m in r:
                if m not in metrics:
                    metrics.append(m)
    med = {
        n: {
            m: statistics.median([r[m] for r in rs if m in r])
            for m in metrics
            if any(m in r for r in rs)
        }
        for n, rs in results.items()
    }
    lines = ["| figure | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for m in metrics:
        cells = [f"{med[n][m]:.1f}" if m in med[n] else "—" for n in names]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    ours = "socks5twist"
    if ours not in med or "direct" not in med:
        return "\n".join(lines)  # (--only without them: the figures alone)
    lines.append("")
    lines.append(
        f"Ratios of {ours} (medians; throughput and sessions: higher is better; "
        "latency added over direct and memory: lower is better)"
    )
    lines.append("")
    peers_ = [n for n in names if n not in (ours, "direct")]
    lines.append("| figure | vs direct | " + " | ".join(f"vs {p}" for p in peers_) + " |")
    lines.append("|---" * (len(peers_) + 2) + "|")
    for m in metrics:
        if m not in med[ours]:
            continue
        mine = med[ours][m]
        cells = []
        for other in ["direct", *peers_]:
            theirs = med[other].get(m)
            if theirs is None:
                cells.append("—")
            elif m.startswith("latency"):
                base = med["direct"][m]
                added_mine, added_theirs = mine - base, theirs - base
                if other == "direct":
                    cells.append(f"+{added_mine:.0f} us")
                else:
                    cells.append(f"{added_mine / added_theirs:.2f}x" if added_theirs > 0 else "—")
            else:
                cells.append(f"{mine / theirs:.2f}x" if theirs else "—")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    parser.add_argument("--only", action="append", help="measure only these peers (and direct)")
    parser.add_argument("--json", help="also write the raw figures here")
    parser.add_argument(
        "--baseline",
        metavar="REF",
        help="also measure socks5twist as of this git commit (before a change), by and "
        "with --access-log, in the rounds and the alternations",
    )
    parser.add_argument(
        "--pairs",
        type=int,
        default=7,
        help="alternations for the paired ratios of the closest figures (0: none)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="socks5twist-bench-") as tmp:
        workdir = Path(tmp)
        loadgen = build_loadgen(workdir)
        server_port = free_port()
        server = subprocess.Popen(
            [loadgen, "serve", str(server_port)], stdout=subprocess.PIPE, start_new_session=True
        )
        try:
            assert server.stdout is not None
            server.stdout.readline()
            target = f"127.0.0.1:{server_port}"
            baseline = None
            if args.baseline:
                baseline = workdir / "baseline"
                baseline.mkdir()
                archive = subprocess.run(
                    ["git", "-C", str(HERE.parent), "archive", args.baseline],
                    capture_output=True,
                    check=True,
                ).stdout
                subprocess.run(["tar", "-x", "-C", str(baseline)], input=archive, check=True)
            candidates, missing = peers(loadgen, baseline)
            if args.only:
                candidates = [p for p in candidates if p.name in ("direct", *args.only)]
            for note in missing:
                print(f"bench: left out {note}", file=sys.stderr)
            results: dict[str, list[dict[str, float]]] = {p.name: [] for p in candidates}
            for round_no in range(args.rounds):
                shift = round_no % len(candidates)
                order = candidates[shift:] + candidates[:shift]
                for peer in order:
                    started = time.monotonic()
                    try:
                        results[peer.name].append(
                            measure(peer, loadgen, target, args.quick, workdir)
                        )
                    except Exception as e:
                        print(f"bench: round {round_no + 1}, {peer.name}: {e}", file=sys.stderr)
                    print(
                        f"bench: round {round_no + 1}/{args.rounds} {peer.name}: "
                        f"{time.monotonic() - started:.0f}s",
                        file=sys.stderr,
                    )
            results = {n: r for n, r in results.items() if r}
            pairs = paired(candidates, loadgen, target, args.pairs, args.quick, workdir)
            if results:
                print(table(results))
            paired_text = paired_table(pairs)
            if paired_text:
                print()
                print(
                    f"Paired ratios ({args.pairs} alternations, each server right after "
                    "the other; median [lowest-highest], and in how many the target was reached)"
                )
                print()
                print(paired_text)
            if args.json:
                Path(args.json).write_text(
                    json.dumps({"rounds": results, "pairs": pairs}, indent=1)
                )
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(10)


if __name__ == "__main__":
    main()
