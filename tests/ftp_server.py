"""
A local anonymous FTP server (Twisted's own) for the BIND interop test:
C{python ftp_server.py ROOT} listens on 127.0.0.1, on a free port, and prints
the port number on its first line.
"""

import sys

from twisted.cred.checkers import AllowAnonymousAccess
from twisted.cred.portal import Portal
from twisted.internet import reactor
from twisted.protocols.ftp import FTPFactory, FTPRealm


def main() -> None:
    portal = Portal(FTPRealm(sys.argv[1]), [AllowAnonymousAccess()])
    factory = FTPFactory(portal)
    factory.allowAnonymous = True
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
    print(port.getHost().port, flush=True)  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
