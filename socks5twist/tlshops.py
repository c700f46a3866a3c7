"""
TLS to upstream proxies (C{socks5s://} and C{https://} hops): the CAs a
rule's C{ca_file} names, read and checked when the rules are loaded, and
the client TLS options a hop is reached with.

pyOpenSSL and service_identity (C{twisted[tls]}) are imported only here and
only when a rule asks for TLS, so a server without them runs every other
rule; a rule with a TLS hop is then refused with L{MISSING} when loaded,
not when its first request comes.  Errors are C{ValueError}s whose text
names the file (never its content); L{socks5twist.routes} names the key.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["MISSING", "check_support", "client_options", "read_ca_file"]

MISSING = "TLS hops need pyOpenSSL and service_identity: pip install 'twisted[tls]'"
# A CA file is a few certificates; a bigger one is not what was meant.
MAX_CA_FILE = 1 << 20
_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)


def check_support() -> None:
    """Raise C{ValueError(MISSING)} unless TLS hops can be made here."""
    try:
        import OpenSSL  # noqa: F401
        import service_identity  # noqa: F401
    except ImportError:
        raise ValueError(MISSING) from None


def _certificates(data: bytes) -> list[Any]:
    from twisted.internet.ssl import Certificate

    found = []
    for block in _PEM.findall(data):
        try:
            found.append(Certificate.loadPEM(block))
        except Exception:
            raise ValueError("a CERTIFICATE block is no certificate") from None
    return found


def read_ca_file(path: str) -> bytes:
    """
    The PEM text of C{path}, once it is known to hold at least one
    certificate and nothing that claims to be one but is not.
    """
    check_support()
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CA_FILE + 1)
    except OSError as e:
        raise ValueError(f"{path}: {e.strerror}") from None
    if len(data) > MAX_CA_FILE:
        raise ValueError(f"{path}: more than {MAX_CA_FILE} bytes")
    try:
        if not _certificates(data):
            raise ValueError("no PEM certificate in it")
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    return data


def client_options(host: str, ca: bytes | None) -> Any:
    """
    The client TLS options for a hop at C{host} (a name or an IP address:
    the certificate must name it), trusting the certificates of C{ca}
    (PEM), or the system's CAs without it.
    """
    from twisted.internet.ssl import (
        optionsForClientTLS,
        platformTrust,
        trustRootFromCertificates,
    )

    trust = platformTrust() if ca is None else trustRootFromCertificates(_certificates(ca))
    return optionsForClientTLS(host, trustRoot=trust)
