"""
The C{twistd socks5} plugin.  Kept tiny: twistd imports every plugin module
to list them, so the real code is imported only when the service is made.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin
from zope.interface import implementer


def _options() -> Any:
    from twisted.python import usage

    from socks5twist.tap import Options

    class TwistdOptions(Options):
        """Option errors end twistd with one line, not the whole usage text."""

        def parseOptions(self, options: Any = None) -> None:
            try:
                super().parseOptions(options)
            except usage.UsageError as e:
                raise SystemExit(f"twistd socks5: error: {e}") from None

    return TwistdOptions()


@implementer(IServiceMaker, IPlugin)
class _SOCKS5ServiceMaker:
    tapname = "socks5"
    description = "A SOCKS5 proxy server (RFC 1928/1929) with twisted.cred authentication."

    @property
    def options(self) -> Any:
        return _options

    def makeService(self, options: Any) -> Any:
        from socks5twist.tap import makeService

        _raise_descriptor_limit()
        service = makeService(options)
        service.exit_on_listen_failure = True
        service.handle_signals = True
        service.own_text_log = True
        return service


def _raise_descriptor_limit() -> None:
    # Each tunnel holds two sockets (and two pipes while it splices): lift the
    # soft limit on open files to the hard one, as servers commonly do.
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass


socks5 = _SOCKS5ServiceMaker()
