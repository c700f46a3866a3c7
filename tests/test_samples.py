"""
The sample files in C{contrib/} load with the real loaders and mean what
their comments say.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from socks5twist import rules
from socks5twist.rules import Query

CONTRIB = Path(__file__).resolve().parent.parent / "contrib"


def decide(loaded: rules.Rules, **fields: object) -> str:
    query: dict[str, object] = {"client": "192.0.2.7", "user": None, "command": "connect"}
    query.update(fields)
    for key in ("client", "address"):
        value = query.get(key)
        if isinstance(value, str):
            query[key] = ipaddress.ip_address(value)
    decision = loaded.decide(Query(**query))  # type: ignore[arg-type]
    assert decision is not None, f"undecided: {query}"
    return f"{decision.verdict.value} {decision.label}"


def test_sample_rules_file_loads_and_decides_as_its_comments_say() -> None:
    loaded = rules.load(str(CONTRIB / "rules.toml"))
    assert loaded.default is rules.Verdict.DENY
    assert [rule.name for rule in loaded.rules] == [
        "no metadata, loopback or link-local",
        "web",
        "office",
        "dns",
    ]
    web = {"name": "www.example.org", "address": "93.184.215.14"}
    assert decide(loaded, port=443, **web) == "allow #2 (web)"
    assert decide(loaded, port=8080, user="alice", **web) == "allow #2 (web)"
    assert decide(loaded, port=22, **web) == "deny default"
    assert decide(loaded, port=443, user="bob", **web) == "deny default"
    # The metadata service, by any name, for anyone (the office included).
    assert (
        decide(loaded, client="10.20.1.2", port=80, name="x.example.org", address="169.254.169.254")
        == "deny #1 (no metadata, loopback or link-local)"
    )
    # 127.0.0.1 in its NAT64 spelling is still loopback.
    assert decide(loaded, port=80, address="64:ff9b::7f00:1").startswith("deny #1")
    assert decide(loaded, client="10.20.1.2", port=22, address="198.51.100.1") == (
        "allow #3 (office)"
    )
    assert decide(loaded, command="udp", port=53, address="192.0.2.53") == "allow #4 (dns)"
    assert decide(loaded, command="udp", port=53, address="192.0.2.54") == "deny default"
    # [[auth]]: the office skips the password, others need one.
    assert loaded.auth_methods(ipaddress.ip_address("10.20.3.4")) == ("none",)
    assert loaded.auth_methods(ipaddress.ip_address("192.0.2.7")) is None
