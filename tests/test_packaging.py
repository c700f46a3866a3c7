"""
Packaging: the wheel carries the plugin without breaking Twisted's own
packages, and C{twistd --help} lists C{socks5} after a regular and an
editable install.

Each install is checked in isolation from the environment running the tests
(which has socks5twist installed already): C{python -S} with only the install
and Twisted's own directory on the path, from a directory outside the project.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import twisted

PROJECT = Path(__file__).resolve().parent.parent
# The directory holding twisted, zope.interface and their dependencies.
DEPENDENCIES = str(Path(twisted.__file__).resolve().parent.parent)
LIST_PLUGINS = (
    "import sys; sys.argv = ['twistd', '--help']\n"
    "from twisted.scripts.twistd import run\n"
    "try:\n    run()\nexcept SystemExit:\n    pass\n"
)


def pip(*args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args],
        check=True,
        timeout=600,
    )


def twistd_help(python: str, path: list[str], cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = os.pathsep.join(path)
    result = subprocess.run(
        [python, *(["-S"] if python == sys.executable else []), "-c", LIST_PLUGINS],
        capture_output=True,
        cwd=cwd,
        env=env,
        timeout=120,
    )
    return result.stdout.decode() + result.stderr.decode()


def test_wheel_has_the_plugin_license_and_py_typed_and_no_twisted_init(tmp_path: Path) -> None:
    pip("wheel", "--no-deps", "-w", str(tmp_path / "dist"), str(PROJECT))
    [wheel] = (tmp_path / "dist").glob("socks5twist-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "twisted/plugins/socks5twist_plugin.py" in names
    assert "socks5twist/__init__.py" in names
    assert "socks5twist/codec.py" in names
    assert "twisted/__init__.py" not in names
    assert "twisted/plugins/__init__.py" not in names
    assert not [n for n in names if n.startswith("tests/")]
    # The license the metadata declares, and PEP 561's marker of a typed package.
    [license_file] = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
    with zipfile.ZipFile(wheel) as archive:
        assert archive.read(license_file) == (PROJECT / "LICENSE").read_bytes()
        assert b"MIT License" in archive.read(license_file)
        metadata = archive.read(license_file.replace("licenses/LICENSE", "METADATA")).decode()
    assert "License-Expression: MIT" in metadata
    assert "socks5twist/py.typed" in names

    # A regular install of that wheel: twistd lists the plugin.
    target = tmp_path / "site"
    pip("install", "--no-deps", "--target", str(target), str(wheel))
    assert not (target / "twisted" / "__init__.py").exists()
    output = twistd_help(sys.executable, [str(target), DEPENDENCIES], tmp_path)
    assert "socks5 " in output, output
    # Without the install, it does not (so the check above can fail), unless
    # the environment running the tests holds a regular install itself.
    if not (Path(DEPENDENCIES) / "twisted" / "plugins" / "socks5twist_plugin.py").exists():
        output = twistd_help(sys.executable, [DEPENDENCIES], tmp_path)
        assert "socks5 " not in output, output


def test_editable_install_lists_the_plugin(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    pip("--python", python, "install", "--no-deps", "-e", str(PROJECT))
    output = twistd_help(python, [DEPENDENCIES], tmp_path)
    assert "socks5 " in output, output


def test_unit_tests_without_the_test_extra_say_how_to_get_it(tmp_path: Path) -> None:
    # hypothesis made unimportable, as in an install without the extra.
    run_trial = (
        "import sys\n"
        "sys.modules['hypothesis'] = None\n"
        "sys.argv = ['trial', 'socks5twist.test.test_logs']\n"
        "from twisted.scripts.trial import run\n"
        "run()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", run_trial], capture_output=True, cwd=tmp_path, timeout=120
    )
    output = result.stdout.decode() + result.stderr.decode()
    assert result.returncode != 0, output
    assert "pip install 'socks5twist[test]'" in output, output
    # With hypothesis there, the same run passes (so the check above can fail).
    result = subprocess.run(
        [sys.executable, "-c", run_trial.replace("sys.modules['hypothesis'] = None", "")],
        capture_output=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
