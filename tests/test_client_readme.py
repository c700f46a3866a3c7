"""
The README's client endpoint program runs as printed: taken from the README
(the block marked C{<!-- runs: client-endpoint -->}), its ports changed to
free ones on loopback, run against two real socks5twist servers and a local
web server.  (C{tests/test_readme.py}, where it exists, checks that every
Python block of the README is marked so.)
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from .conftest import free_port, wait_until

README = Path(__file__).resolve().parent.parent / "README.md"
MARKER = re.compile(r"^<!-- runs: client-endpoint[^\n]*-->\n```python\n(.*?)^```$", re.M | re.S)


def test_client_endpoint_example_runs(start_server, origin, tmp_path: Path) -> None:
    [program] = MARKER.findall(README.read_text())
    first = start_server("--auth", "memory:alice:s3cret")
    second = start_server()
    refused = free_port()
    ports = {"1080": first.address[1], "1081": second.address[1], "8000": origin[1]}
    ports["8009"] = refused
    for old, new in ports.items():
        assert re.search(rf"\b{old}\b", program), old
        program = re.sub(rf"\b{old}\b", str(new), program)
    result = subprocess.run(
        [sys.executable, "-c", program], cwd=tmp_path, capture_output=True, timeout=60
    )
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().splitlines() == [
        "one hop: HTTP/1.0 200 OK (the destination saw 127.0.0.1)",
        "from a string: HTTP/1.0 200 OK (the destination saw 127.0.0.1)",
        "two hops: HTTP/1.0 200 OK (the destination saw 127.0.0.1)",
        f"refused: failed: the proxy replied 0x05 (connection refused) for 127.0.0.1:{refused}",
    ]
    # Every request went through the first; the chains' through the second too.
    wait_until(lambda: len(first.session_lines()) == 4, 10, "the first's session lines")
    wait_until(lambda: len(second.session_lines()) == 2, 10, "the second's session lines")
    assert "s3cret" not in first.log()
