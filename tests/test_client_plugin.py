"""
The C{socks5:} client endpoint string after a regular install of the wheel:
Twisted's C{clientFromString} finds the plugin in C{twisted/plugins}, and
importing the plugin does not import the endpoint until a string is parsed.
Checked in isolation, as C{tests/test_packaging.py} checks C{twistd}.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

from .test_packaging import DEPENDENCIES, PROJECT, pip

PARSE = (
    "import sys\n"
    "from twisted.internet import reactor\n"
    "from twisted.internet.endpoints import clientFromString\n"
    "from twisted.internet.interfaces import IStreamClientEndpointStringParserWithReactor\n"
    "from twisted.plugin import getPlugins\n"
    "list(getPlugins(IStreamClientEndpointStringParserWithReactor))\n"
    "print('imported before parsing:', 'socks5twist.client' in sys.modules)\n"
    "print(clientFromString(reactor, r'socks5:example.org:443:proxy=tcp\\:127.0.0.1\\:1080'))\n"
)


def parse_in(path: list[str], cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = os.pathsep.join(path)
    result = subprocess.run(
        [sys.executable, "-S", "-c", PARSE], capture_output=True, cwd=cwd, env=env, timeout=120
    )
    return result.stdout.decode() + result.stderr.decode()


def test_installed_wheel_parses_socks5_strings(tmp_path: Path) -> None:
    pip("wheel", "--no-deps", "-w", str(tmp_path / "dist"), str(PROJECT))
    [wheel] = (tmp_path / "dist").glob("socks5twist-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "twisted/plugins/socks5twist_client.py" in names
    assert "socks5twist/client/endpoint.py" in names
    target = tmp_path / "site"
    pip("install", "--no-deps", "--target", str(target), str(wheel))
    output = parse_in([str(target), DEPENDENCIES], tmp_path)
    assert "imported before parsing: False" in output, output
    assert "<SOCKS5ClientEndpoint example.org:443 via <twisted.internet.endpoints.TCP4" in output
    # Without the install, the string is unknown (so the check above can fail),
    # unless the environment running the tests holds a regular install itself.
    if not (Path(DEPENDENCIES) / "twisted" / "plugins" / "socks5twist_client.py").exists():
        output = parse_in([DEPENDENCIES], tmp_path)
        assert "Unknown endpoint type: 'socks5'" in output, output
