"""
The Kerberos fixture itself (L{tests.kerberos}): a ticket can be got from
the KDC it starts, and python-gssapi establishes a context in this process
with C{rcmd@localhost}, accepted from the realm's keytab; the second
service's keytab cannot accept it.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from .conftest import require_module
from .kerberos import Realm


def test_kinit_gets_a_ticket_from_the_kdc(kerberos_realm: Realm, tmp_path):
    ccache = kerberos_realm.kinit("alice", tmp_path / "alice.cc")
    klist = subprocess.run(
        ["klist", "-c", f"FILE:{ccache}"],
        env=kerberos_realm.env,
        capture_output=True,
        timeout=30,
        check=True,
    ).stdout.decode()
    assert "Default principal: alice@SOCKS.TEST" in klist
    assert "krbtgt/SOCKS.TEST@SOCKS.TEST" in klist
    with pytest.raises(AssertionError, match="kinit"):
        kerberos_realm.passwords["mallory"] = "guess"
        kerberos_realm.kinit("mallory", tmp_path / "mallory.cc")


def test_python_gssapi_context_with_rcmd_at_localhost(kerberos_realm: Realm, tmp_path):
    gssapi = require_module("gssapi")
    ccache = kerberos_realm.kinit("bob", tmp_path / "bob.cc")
    saved = dict(os.environ)
    with kerberos_realm.environ(ccache):
        target = gssapi.Name("rcmd@localhost", gssapi.NameType.hostbased_service)
        client = gssapi.SecurityContext(name=target, usage="initiate")
        store = {"keytab": str(kerberos_realm.keytab_path)}
        server_creds = gssapi.Credentials(usage="accept", store=store)
        server = gssapi.SecurityContext(creds=server_creds, usage="accept")
        token = client.step()
        while not (client.complete and server.complete):
            token = server.step(token)
            if token is not None and not client.complete:
                token = client.step(token)
        assert str(server.initiator_name) == "bob@SOCKS.TEST"
        assert str(client.target_name) == "rcmd/localhost@SOCKS.TEST"
        sealed = client.wrap(b"secret", True)
        assert sealed.encrypted and server.unwrap(sealed.message).message == b"secret"

        other = {"keytab": str(kerberos_realm.other_keytab_path)}
        wrong = gssapi.SecurityContext(
            creds=gssapi.Credentials(usage="accept", store=other), usage="accept"
        )
        fresh = gssapi.SecurityContext(name=target, usage="initiate")
        with pytest.raises(gssapi.exceptions.GSSError, match="not found in keytab"):
            # python-gssapi defers a step's error to the next call on the context
            wrong.step(fresh.step())
            assert not wrong.complete
    assert dict(os.environ) == saved
