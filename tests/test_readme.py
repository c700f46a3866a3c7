"""
The README's code runs as printed.

Each block the README says runs is marked with C{<!-- runs: NAME ... -->} on
the line before it (a piece of a program shown above it, with C{<!--
fragment: ... -->}); these tests take the blocks from the README itself, so
the two cannot drift apart.  They change only the ports (1080 and 8000
become free ones, on loopback), and run every program from a temporary
directory; every destination is a local server.
"""

from __future__ import annotations

import hashlib
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from socks5twist import rules

from .conftest import Blob, free_port, require_tool, wait_until

README = Path(__file__).resolve().parent.parent / "README.md"
MARKER = re.compile(r"^<!-- (runs|fragment): ([\w-]+)[^\n]*-->\n```(\w*)\n(.*?)^```$", re.M | re.S)
BIN = Path(sys.executable).parent


def blocks() -> dict[str, tuple[str, str, str]]:
    """Every marked block: name -> (kind, language, text)."""
    found = {}
    for kind, name, language, text in MARKER.findall(README.read_text()):
        assert name not in found, f"two README blocks are named {name}"
        found[name] = (kind, language, text)
    return found


def test_every_python_block_is_marked_as_run() -> None:
    text = README.read_text()
    python_blocks = text.count("```python\n")
    marked = [b for b in blocks().values() if b[1] == "python"]
    assert python_blocks == len(marked), "a ```python block in README.md is not marked as run"
    assert {name for name, (kind, _, _) in blocks().items() if kind == "runs"} >= {
        "quick-start-server",
        "quick-start-client",
        "library",
        "rules",
    }


def test_rules_example_loads() -> None:
    _, language, text = blocks()["rules"]
    assert language == "toml"
    parsed = rules.parse(text, "README.md")
    assert len(parsed.rules) == 3 and len(parsed.auth) == 1
    assert parsed.default is rules.Verdict.DENY


class Program:
    """A process a test started (stopped by its PID), its output in a file."""

    def __init__(self, argv: list[str], cwd: Path, name: str) -> None:
        self.output = cwd / f"{name}.out"
        with self.output.open("wb") as out:
            self.process = subprocess.Popen(
                argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def wait_for(self, what: str, timeout: float = 20) -> None:
        def seen() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"exited ({self.process.returncode}):\n{self.text()}")
            return what in self.text()

        wait_until(seen, timeout, repr(what))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


@pytest.fixture
def programs() -> Iterator[list[Program]]:
    started: list[Program] = []
    yield started
    for program in started:
        program.stop()


def program_argv(words: list[str]) -> list[str]:
    """The README's C{.venv/bin/X} is this environment's X; C{python3} is this Python."""
    program = words[0]
    if program.startswith(".venv/bin/"):
        path = BIN / program.removeprefix(".venv/bin/")
        assert path.exists(), f"{path} is missing (the README runs {program})"
        return [str(path), *words[1:]]
    if program == "python3":
        return [sys.executable, *words[1:]]
    if program == "curl":
        return [require_tool("curl"), *words[1:]]
    return words


def with_ports(text: str, ports: dict[str, int]) -> str:
    for old, new in ports.items():
        text = re.sub(rf"\b{old}\b", str(new), text)
    return text


def start_quick_start_server(tmp_path: Path, programs: list[Program], port: int) -> Program:
    _, _, line = blocks()["quick-start-server"]
    command = line.strip().split(" && ")[-1]
    assert "--port 1080" in command, command
    command = command.replace("--port 1080", f"--port tcp:{port}:interface=127.0.0.1")
    server = Program(program_argv(shlex.split(command)), tmp_path, "server")
    programs.append(server)
    server.wait_for("listening on")
    return server


def test_quick_start_runs_offline(tmp_path: Path, programs: list[Program]) -> None:
    proxy, web = free_port(), free_port()
    server = start_quick_start_server(tmp_path, programs, proxy)
    (tmp_path / "hello.txt").write_text("hello")
    _, _, script = blocks()["quick-start-client"]
    background: list[Program] = []
    outputs = []
    for line in with_ports(script, {"1080": proxy, "8000": web}).splitlines():
        if line.endswith(" &"):
            job = Program(program_argv(shlex.split(line[:-2])), tmp_path, "job")
            programs.append(job)
            background.append(job)
            job.wait_for("Serving HTTP")
        elif line.startswith("kill %"):
            background[int(line[6:]) - 1].stop()
        else:
            words = shlex.split(line)
            result = subprocess.run(
                [*program_argv(words), "--silent", "--show-error", "--max-time", "20"],
                capture_output=True,
                cwd=tmp_path,
                timeout=60,
            )
            assert result.returncode == 0, result.stderr.decode()
            outputs.append(result.stdout.decode())
    assert "Directory listing" in outputs[-1] and "hello.txt" in outputs[-1], outputs
    assert background and background[0].process.poll() is not None, "kill %1 did not stop it"
    wait_until(lambda: " session " in server.text(), 5, "the session's line")
    [line] = [ln for ln in server.text().splitlines() if "] session " in ln]
    assert f"CONNECT 127.0.0.1:{web} -> 127.0.0.1:{web} " in line and "reply=0x00" in line


def library_program(tmp_path: Path, port: int) -> Path:
    _, language, text = blocks()["library"]
    assert language == "python"
    assert '"tcp:1080:interface=127.0.0.1"' in text
    path = tmp_path / "socks5-example.py"
    path.write_text(with_ports(text, {"1080": port}))
    return path


def curl_through(port: int, origin: tuple[str, int], blob: Blob) -> None:
    result = subprocess.run(
        [
            require_tool("curl"), "--silent", "--show-error", "--max-time", "20",
            "--socks5-hostname", f"alice:secret@127.0.0.1:{port}",
            f"http://{origin[0]}:{origin[1]}/blob",
        ],
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    assert hashlib.sha256(result.stdout).hexdigest() == blob.sha256
    refused = subprocess.run(
        [
            require_tool("curl"), "--silent", "--max-time", "20",
            "--socks5-hostname", f"alice:wrong@127.0.0.1:{port}",
            f"http://{origin[0]}:{origin[1]}/blob",
        ],
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    assert refused.returncode == 97, refused  # curl: the proxy refused the login


@pytest.mark.parametrize("how", ["script", "twistd -ny"])
def test_library_example_serves_a_real_client(
    how: str, tmp_path: Path, programs: list[Program], origin: tuple[str, int], blob: Blob
) -> None:
    port = free_port()
    path = library_program(tmp_path, port)
    if how == "script":
        argv = [sys.executable, str(path)]
    else:
        argv = [str(BIN / "twistd"), "-ny", str(path)]
    program = Program(argv, tmp_path, "library")
    programs.append(program)
    program.wait_for(f"starting on {port}")
    curl_through(port, origin, blob)
    wait_until(lambda: program.text().count("] session ") >= 2, 5, "two session lines")
    program.stop()
    assert program.process.returncode in (0, 1, -signal.SIGTERM), program.text()
    assert "Traceback" not in program.text(), program.text()


def test_proxy_header_fragment_runs_in_the_library_program(tmp_path: Path) -> None:
    path = library_program(tmp_path, free_port())
    _, language, fragment = blocks()["proxy-header"]
    assert language == "python"
    namespace: dict[str, object] = {"__name__": "readme"}
    exec(compile(path.read_text() + fragment, str(path), "exec"), namespace)
    services = list(namespace["application_services"])  # type: ignore[call-overload]
    assert len(services) == 2
    assert type(services[1].factory).__name__ == "ProxyHeaderFactory"
    assert [str(n) for n in services[1].factory.trusted] == ["10.0.0.2/32"]
