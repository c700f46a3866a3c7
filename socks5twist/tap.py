"""
The C{twistd socks5} command: the service that its options describe.

C{makeService(options)} returns a plain L{MultiService}, so the same
configuration can be added to any other Twisted application.  The options
themselves are parsed and checked in L{socks5twist.options}; the listeners
are made in L{socks5twist.listeners}.
"""

from __future__ import annotations

from twisted.application import strports
from twisted.logger import Logger

from .accesslog import AccessLog
from .auth import portal_for_checkers
from .factory import SOCKS5ServerFactory
from .listeners import AdoptedPortService, listener, proxy_listener
from .logsafe import escape
from .options import Options
from .passwords import PasswordFile
from .rules import describe as describe_rules
from .service import ListenFailed, SOCKS5Service

__all__ = [
    "ListenFailed",
    "Options",
    "SOCKS5Service",
    "makeService",
    "make_factory",
    "proxy_listener",
]

log = Logger()


def make_factory(options: Options) -> SOCKS5ServerFactory:
    """The factory that C{options} describe."""
    checkers = options.get("credCheckers") or []
    portal = portal_for_checkers(checkers) if checkers else None
    from twisted.internet import reactor

    access_log = None
    if options["access-log"]:
        access_log = AccessLog(options["access-log"], reactor)
        # Lines of sessions closed as the reactor stops are written too.
        reactor.addSystemEventTrigger("after", "shutdown", access_log.close)
    return SOCKS5ServerFactory(
        portal,
        handshake_timeout=options["handshake-timeout"],
        connect_timeout=options["connect-timeout"],
        idle_timeout=options["idle-timeout"],
        drain_timeout=options["drain-timeout"],
        max_clients=options["max-clients"],
        bind_timeout=options["bind-timeout"],
        external_address=options["external-address"],
        udp_interface=options["udp-interface"],
        udp_any_source=bool(options["udp-any-source"]),
        max_udp_per_client=options["max-udp-per-client"],
        rules=options["parsed-rules"],
        max_sessions_per_client=options["max-sessions-per-client"],
        max_sessions_per_user=options["max-sessions-per-user"],
        outgoing_addresses=options["outgoing-addresses"],
        splice=not options["no-splice"],
        allowed_clients=options["allowed-clients"] or None,
        access_log=access_log,
        trusted_proxies=options["trusted-proxies"],
        accounting=options["accounting"],
        accounting_failure=options["accounting-failure"],
        gssapi=options["gssapi-settings"],
    )


def makeService(options: Options) -> SOCKS5Service:
    """A service listening on each C{--port} with one shared factory."""
    factory = make_factory(options)
    top = SOCKS5Service(factory, options["rules"], options["shutdown-grace"])
    if options["worker-listeners"]:
        # A worker started by --workers: serve the sockets it inherited.
        for fd, description in options["worker-listeners"]:
            adopted = AdoptedPortService(fd, description, factory)
            adopted._description = f"{description} (inherited)"  # type: ignore[attr-defined]
            adopted.setServiceParent(top)
    else:
        for description in options["ports"]:
            ipv6_only = description in options["ipv6-only"]
            listener(description, factory, ipv6_only).setServiceParent(top)
        if options["ipv6"] is not None:
            log.warn(
                "IPv6 is not available on this machine ({why}): serving IPv4 only",
                why=options["ipv6"],
            )
        top.worker_count = options["workers"]
        top.worker_argv = options.argv
    top.password_files = [
        c for c in options.get("credCheckers") or [] if isinstance(c, PasswordFile)
    ]
    methods = []
    if factory.gssapi is not None:
        settings = factory.gssapi
        methods.append(
            f"GSSAPI (service {settings.service}, keytab {escape(settings.keytab)},"
            f" levels {settings.describe_levels()}"
            + (", NEC's unwrapped level too)" if settings.allow_nec else ")")
        )
    if factory.portal is not None:
        methods.append("username/password")
    if not methods:
        log.info(
            "no --auth: serving without authentication to clients in {networks}",
            networks=", ".join(str(n) for n in factory.client_policy.networks),
        )
    else:
        log.info(
            "{methods} required; serving clients in {networks}",
            methods=" or ".join(methods),
            networks=", ".join(str(n) for n in factory.client_policy.networks),
        )
    if options["metrics"]:
        from .metrics import site

        metrics_service = strports.service(options["metrics"], site(factory.enable_metrics()))
        metrics_service._description = f"{options['metrics']} (metrics)"  # type: ignore[attr-defined]
        metrics_service.setServiceParent(top)
    if options["rules"]:
        log.info(
            "rules from {path}: {rules} (SIGHUP rereads it)",
            path=options["rules"],
            rules="; ".join(describe_rules(factory.rules)),
        )
    return top
