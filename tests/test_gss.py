"""
L{socks5twist.gss} over a real KDC (L{tests.kerberos}): a context between
its L{Initiator} and L{Acceptor}, the protection level both ways, protected
messages, and failures that surface as L{GSSFailure} at the step that failed.
"""

from __future__ import annotations

import pytest

from socks5twist.gsswire import Protection

from .conftest import require_module
from .kerberos import Realm


def _establish(initiator, acceptor) -> None:
    token = initiator.step(None)
    for _ in range(10):
        reply = acceptor.step(token)
        if initiator.complete and acceptor.complete:
            return
        token = initiator.step(reply)
        if initiator.complete and acceptor.complete:
            return
    raise AssertionError("no context after 10 round trips")


def test_initiator_and_acceptor_agree_on_a_level_and_messages(kerberos_realm: Realm, tmp_path):
    require_module("gssapi")
    from socks5twist import gss

    settings = gss.ServerSettings(keytab=str(kerberos_realm.keytab_path))
    with kerberos_realm.environ(kerberos_realm.kinit("alice", tmp_path / "a.cc")):
        acceptor = gss.Acceptor(gss.acceptor_credentials(settings), settings)
        initiator = gss.Initiator("rcmd@localhost")
        _establish(initiator, acceptor)
        assert acceptor.principal() == "alice@SOCKS.TEST"
        asked = acceptor.requested_level(
            initiator.level_request(Protection.INTEGRITY, False), False
        )
        assert asked == Protection.INTEGRITY
        answer = acceptor.level_answer(Protection.INTEGRITY, False)
        assert initiator.level_answer(answer, False) == Protection.INTEGRITY
        sender = initiator.protector(Protection.CONFIDENTIALITY)
        receiver = acceptor.protector(Protection.CONFIDENTIALITY)
        data = bytes(range(256)) * 300  # over one chunk: two tokens
        tokens = sender.wrap(data)
        assert len(tokens) == 3 and data not in b"".join(tokens)
        assert b"".join(receiver.unwrap(t) for t in tokens) == data
        signed_only = initiator.protector(Protection.INTEGRITY).wrap(b"x")[0]
        with pytest.raises(gss.GSSFailure, match="not encrypted"):
            receiver.unwrap(signed_only)
        with pytest.raises(gss.GSSFailure):
            receiver.unwrap(b"\x60garbage")


def test_a_step_that_fails_raises_at_the_step(kerberos_realm: Realm, tmp_path):
    """python-gssapi would return an error token and raise later, outside our try."""
    require_module("gssapi")
    from socks5twist import gss

    settings = gss.ServerSettings(keytab=str(kerberos_realm.other_keytab_path))
    with kerberos_realm.environ(kerberos_realm.kinit("alice", tmp_path / "a.cc")):
        acceptor = gss.Acceptor(gss.acceptor_credentials(settings), settings)
        token = gss.Initiator("rcmd@localhost").step(None)
        assert token is not None
        with pytest.raises(gss.GSSFailure, match="not found in keytab"):
            acceptor.step(token)
        initiator = gss.Initiator("rcmd@localhost")
        initiator.step(None)
        with pytest.raises(gss.GSSFailure):
            initiator.step(b"\x60\x03garbage")


def test_no_ticket_fails_the_first_step(kerberos_realm: Realm):
    require_module("gssapi")
    from socks5twist import gss

    with kerberos_realm.environ():
        initiator = gss.Initiator("rcmd@localhost")
        with pytest.raises(gss.GSSFailure, match="No Kerberos credentials available"):
            initiator.step(None)
