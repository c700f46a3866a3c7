"""
A real MIT Kerberos realm for the tests: C{krb5kdc} from Debian's
C{krb5-kdc} on a free loopback port, in a directory of its own.

Not C{k5test}: it calls C{socket.getfqdn()}, which may ask DNS off the
machine.  Here nothing is resolved: the KDC is C{127.0.0.1:PORT}, the only
host is C{localhost} (mapped to the realm by C{[domain_realm]}), and every
lookup that MIT could send to DNS is off (C{dns_lookup_*}, C{rdns},
C{dns_canonicalize_hostname}, C{qualify_shortname}).

What the tests get (L{Realm}): the realm C{SOCKS.TEST}; the users C{alice}
and C{bob} with passwords (L{Realm.passwords}); the service C{rcmd/localhost}
(what curl and Dante ask for by default) in L{Realm.keytab_path}, and a
second service C{other/localhost} in L{Realm.other_keytab_path}, for
"wrong service" tests.  Subprocesses take L{Realm.env}; in-process
python-gssapi calls run inside L{Realm.environ}.  The KDC is started and
stopped by its PID, and every wait is bounded.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

from .conftest import free_port, require_tool, wait_until

__all__ = ["REALM", "Realm", "running_realm"]

REALM = "SOCKS.TEST"
SERVICE = "rcmd/localhost"
OTHER_SERVICE = "other/localhost"
_MASTER_PASSWORD = "master-of-socks"
_TIMEOUT = 30  # seconds for any one Kerberos tool


class Realm:
    """
    A running KDC and its files, under C{workdir}.

    @ivar passwords: the users' passwords (C{alice}, C{bob}, and any that
        L{add_principal} gave one).
    @ivar keytab_path: the keys of C{rcmd/localhost}.
    @ivar other_keytab_path: the keys of C{other/localhost}.
    @ivar port: the KDC's port on 127.0.0.1, TCP and UDP.
    """

    realm = REALM
    service = SERVICE
    other_service = OTHER_SERVICE

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.krb5kdc = require_tool("krb5kdc")
        self.kdb5_util = require_tool("kdb5_util")
        self.kadmin_local = require_tool("kadmin.local")
        self.kinit_path = require_tool("kinit")
        self.passwords: dict[str, str] = {}
        self.keytab_path = workdir / "realm.keytab"
        self.other_keytab_path = workdir / "other.keytab"
        self.rcache_dir = workdir / "rcache"
        self.rcache_dir.mkdir()
        self.default_ccache = workdir / "ccache-none"
        self._process: subprocess.Popen[bytes] | None = None
        self.port = 0

    # -- the environment -----------------------------------------------------------

    @property
    def env(self) -> dict[str, str]:
        """
        The environment for a subprocess that speaks Kerberos in this realm
        (C{os.environ} with these set); the ticket cache is one that holds
        nothing, unless the caller sets C{KRB5CCNAME}.
        """
        env = dict(os.environ)
        env.update(self._variables(self.default_ccache))
        return env

    def _variables(self, ccache: Path | str) -> dict[str, str]:
        return {
            "KRB5_CONFIG": str(self.workdir / "krb5.conf"),
            "KRB5_KDC_PROFILE": str(self.workdir / "kdc.conf"),
            "KRB5CCNAME": f"FILE:{ccache}",
            "KRB5_KTNAME": f"FILE:{self.keytab_path}",
            "KRB5RCACHEDIR": str(self.rcache_dir),
            "KRB5_TRACE": str(self.workdir / "trace.log"),
        }

    @contextlib.contextmanager
    def environ(self, ccache: Path | str | None = None) -> Iterator[None]:
        """
        Sets C{os.environ} for python-gssapi calls in this process (the
        ticket cache C{ccache}, else one that holds nothing), and restores
        it after, even on error.
        """
        variables = self._variables(ccache if ccache is not None else self.default_ccache)
        saved = {name: os.environ.get(name) for name in variables}
        os.environ.update(variables)
        try:
            yield
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value

    # -- setting up and tearing down -------------------------------------------------

    def start(self) -> None:
        """Writes the configuration, creates the database and principals, starts the KDC."""
        for attempt in range(3):
            self.port = _free_tcp_and_udp_port()
            self._write_config()
            if attempt == 0:
                self._run(
                    [self.kdb5_util, "create", "-s", "-r", REALM, "-P", _MASTER_PASSWORD],
                )
                for user in ("alice", "bob"):
                    self.add_principal(user, f"{user}-secret")
                self.add_principal(SERVICE)
                self.add_principal(OTHER_SERVICE)
                self.keytab(SERVICE, self.keytab_path)
                self.keytab(OTHER_SERVICE, self.other_keytab_path)
            try:
                self._start_kdc()
                return
            except _PortTaken:
                continue
        raise AssertionError("krb5kdc could not bind a free port in 3 attempts")

    def _write_config(self) -> None:
        address = f"127.0.0.1:{self.port}"
        (self.workdir / "krb5.conf").write_text(
            "[libdefaults]\n"
            f" default_realm = {REALM}\n"
            " dns_lookup_kdc = false\n"
            " dns_lookup_realm = false\n"
            " dns_canonicalize_hostname = false\n"
            ' qualify_shortname = ""\n'
            " rdns = false\n"
            " udp_preference_limit = 1\n"
            " forwardable = true\n"
            "[realms]\n"
            f" {REALM} = {{\n  kdc = {address}\n  admin_server = {address}\n }}\n"
            "[domain_realm]\n"
            f" localhost = {REALM}\n"
        )
        (self.workdir / "kdc.conf").write_text(
            "[kdcdefaults]\n"
            f" kdc_listen = {address}\n"
            f" kdc_tcp_listen = {address}\n"
            "[realms]\n"
            f" {REALM} = {{\n"
            f"  database_name = {self.workdir / 'principal'}\n"
            f"  key_stash_file = {self.workdir / 'stash'}\n"
            f"  acl_file = {self.workdir / 'kadm5.acl'}\n"
            f"  kdc_listen = {address}\n"
            f"  kdc_tcp_listen = {address}\n"
            "  max_life = 10h\n"
            "  max_renewable_life = 1d\n"
            " }\n"
            "[logging]\n"
            f" kdc = FILE:{self.workdir / 'kdc.log'}\n"
            f" default = FILE:{self.workdir / 'kdc.log'}\n"
        )
        (self.workdir / "kadm5.acl").write_text("")

    def _start_kdc(self) -> None:
        log = self.workdir / "kdc.log"
        before = log.read_text(errors="replace") if log.exists() else ""
        process = subprocess.Popen(
            [self.krb5kdc, "-n", "-r", REALM],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self._process = process

        def listening() -> bool:
            if process.poll() is not None:
                output = process.stdout.read().decode(errors="replace") if process.stdout else ""
                text = log.read_text(errors="replace")[len(before) :] if log.exists() else ""
                self._process = None
                if "Address already in use" in output + text:
                    raise _PortTaken()
                raise AssertionError(f"krb5kdc exited: {output}\n{text}")
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.settimeout(0.5)
                return s.connect_ex(("127.0.0.1", self.port)) == 0

        wait_until(listening, 20, "krb5kdc to listen")

    def stop(self) -> None:
        """Stops the KDC this realm started (by its PID)."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        if process.stdout:
            process.stdout.close()

    # -- principals, keytabs, tickets ----------------------------------------------------

    def _run(
        self, command: list[str], stdin: str | None = None, env: dict[str, str] | None = None
    ) -> str:
        result = subprocess.run(
            command,
            env=env or self.env,
            input=(stdin or "").encode(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=_TIMEOUT,
            check=False,
        )
        output = result.stdout.decode(errors="replace")
        if result.returncode != 0:
            raise AssertionError(f"{' '.join(command)} failed ({result.returncode}): {output}")
        return output

    def _kadmin(self, query: str) -> None:
        output = self._run([self.kadmin_local, "-r", REALM, "-q", query])
        if "error" in output.lower() or "cannot" in output.lower():
            raise AssertionError(f"kadmin.local -q {query.split(' -pw ')[0]!r}: {output}")

    def add_principal(self, name: str, password: str | None = None) -> str:
        """Adds C{name} (a random key when no C{password}); returns C{name@REALM}."""
        if password is None:
            self._kadmin(f"addprinc -randkey {name}")
        else:
            self._kadmin(f"addprinc -pw {password} {name}")
            self.passwords[name] = password
        return f"{name}@{REALM}"

    def keytab(self, principal: str, path: Path | str) -> Path:
        """Writes C{principal}'s keys (new ones: its old keytabs go stale) to C{path}."""
        self._kadmin(f"ktadd -k {path} {principal}")
        return Path(path)

    def kinit(self, principal: str, ccache_path: Path | str, lifetime: str | None = None) -> Path:
        """
        Gets C{principal}'s ticket (its password from L{passwords}) into the
        cache at C{ccache_path}; C{lifetime} as kinit's C{-l} (C{"5s"}).
        """
        command = [self.kinit_path, "-c", f"FILE:{ccache_path}"]
        if lifetime is not None:
            command += ["-l", lifetime]
        command.append(principal)
        self._run(command, stdin=self.passwords[principal.split("@")[0]] + "\n")
        return Path(ccache_path)


class _PortTaken(Exception):
    """The KDC's port was taken between choosing it and binding it."""


def _free_tcp_and_udp_port() -> int:
    """A loopback port free for both TCP and UDP now (the KDC takes both)."""
    for _ in range(20):
        port = free_port()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise AssertionError("no port free for both TCP and UDP")


def running_realm(workdir: Path) -> Iterator[Realm]:
    """A started realm in C{workdir}, stopped when the generator is closed."""
    realm = Realm(workdir)
    try:
        realm.start()
        yield realm
    finally:
        realm.stop()
