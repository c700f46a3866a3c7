"""
What can be found out about an option's value before the server starts, so
that a value that cannot work stops the start with one line instead of a
traceback at start-up or a server that fails every request.

Each check raises L{usage.UsageError} whose message names the option and the
value (never a password) and says why, and how to fix it where there is one
obvious fix.  They use the machine (a test bind, the file system), never the
network beyond it.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import pwd
import re
import socket
import warnings
from typing import TYPE_CHECKING, Any

from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.internet import endpoints
from twisted.python import usage

from . import keytab, systemd
from .logsafe import escape

if TYPE_CHECKING:
    from .gss import ServerSettings
    from .gsswire import Protection

__all__ = [
    "check_endpoint",
    "check_gssapi",
    "check_local_address",
    "check_not_twice",
    "checker_problem",
    "ipv6_problem",
    "split_description",
]

_PORT_TYPES = ("tcp", "tcp6", "ssl")
# A description whose port is 0: the system picks one, another each time.
_ANY_PORT = re.compile(r"^(haproxy:)?(tcp6?|ssl):(port=)?0(:|$)")
# The keytab without --gssapi-keytab or KRB5_KTNAME (MIT's default).
DEFAULT_KEYTAB = "/etc/krb5.keytab"
# How many of a keytab's principals an error lists.
SHOWN_PRINCIPALS = 4
# The local shadow database, which the unix checker reads through spwd.
SHADOW = "/etc/shadow"
# The value of interface= up to the next key=value argument (or the end):
# the part in which an IPv6 address's colons must be escaped.
_INTERFACE = re.compile(r"interface=(.*?)(?=(?<!\\):\w+=|$)")


def split_description(description: str) -> list[str]:
    """
    An endpoint description's fields, split on the colons that are not
    escaped with a backslash, as Twisted's parser splits them.
    """
    fields, current, i = [], [], 0
    while i < len(description):
        char = description[i]
        if char == "\\" and i + 1 < len(description):
            current.append(description[i + 1])
            i += 2
            continue
        if char == ":":
            fields.append("".join(current))
            current = []
        else:
            current.append(char)
        i += 1
    fields.append("".join(current))
    return fields


def check_endpoint(option: str, description: str) -> str:
    """
    Check that C{description} is an endpoint Twisted can listen on, as far
    as that can be known before listening; return it.
    """
    unescaped = _unescaped_interface(description)
    if unescaped is not None:
        fixed = description.replace(unescaped, re.sub(r"(?<!\\):", r"\\:", unescaped), 1)
        raise usage.UsageError(
            f"{option} {description!r}: the colons of the address {unescaped} must be escaped"
            f" with a backslash: {fixed} (quote it in a shell)"
        )
    if re.fullmatch(r"[+-]?\d+", description):
        if not 0 <= int(description) <= 65535:
            raise usage.UsageError(f"{option} {description!r}: a port is a number from 0 to 65535")
        return description
    from twisted.internet import reactor

    fields = split_description(description.removeprefix("haproxy:"))
    try:
        systemd.check(endpoints.serverFromString(reactor, description))
    except Exception as e:
        raise usage.UsageError(f"{option} {description!r}: {_plainly(description, e)}") from None
    positional = [f for f in fields[1:] if "=" not in f]
    named = dict(f.split("=", 1) for f in fields[1:] if "=" in f)
    if fields[0] in _PORT_TYPES:
        port = named.get("port", positional[0] if positional else "")
        if not port.isdigit() or int(port) > 65535:
            raise usage.UsageError(
                f"{option} {description!r}: the port must be a number from 0 to 65535, not {port!r}"
            )
    if fields[0] == "unix":
        path = named.get("address") or (positional[0] if positional else "")
        _check_socket_directory(option, description, path)
    return description


def check_not_twice(
    option: str, description: str, earlier: list[str], by: str = "an earlier --port"
) -> None:
    """
    A port that C{earlier} descriptions already listen on (a bare N as
    C{tcp:N}): else the second listen fails as "Address already in use", as
    if another program held the port.  Port 0 twice is two ports, and allowed.
    """
    same = f"tcp:{int(description)}" if description.isdigit() else description
    if same in earlier and not _ANY_PORT.search(same):
        raise usage.UsageError(f"{option} {description!r}: {same} is already listened on by {by}")


def _plainly(description: str, error: Exception) -> str:
    """Twisted's parser's error in an operator's words where it names its own internals."""
    text = systemd.explain(description, error)
    for pattern, say in _PARSER_ERRORS:
        match = re.fullmatch(pattern, text)
        if match:
            return say.format(*match.groups())
    return text


# A parser's TypeError or ValueError, and what to say instead (a typo in a
# parameter's name, a missing port, a word where a number goes).
_PARSER_ERRORS = [
    (r"_parse\w*\(\) got an unexpected keyword argument '(\w+)'", "no such parameter: {0}="),
    (r"_parse\w*\(\) missing \d+ required positional arguments?: '(\w+)'.*", "needs a {0}"),
    (r"invalid literal for int\(\) with base 10: (.*)", "expected a number, not {0}"),
]


def _unescaped_interface(description: str) -> str | None:
    """The interface= value, if it holds a colon that is not escaped."""
    match = _INTERFACE.search(description)
    if match is None:
        return None
    value = match.group(1)
    return value if re.search(r"(?<!\\):", value) else None


def _check_socket_directory(option: str, description: str, path: str) -> None:
    """A Unix socket (and Twisted's PATH.lock beside it) is created in its directory."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise usage.UsageError(
            f"{option} {description!r}: the directory {directory} does not exist"
        )
    if not os.access(directory, os.W_OK | os.X_OK):
        raise usage.UsageError(
            f"{option} {description!r}: cannot create a socket in {directory}: permission denied"
        )


def check_local_address(option: str, address: str, udp: bool = False) -> None:
    """
    Check that this machine can bind a socket to C{address} (port 0), as the
    server will for each outbound connection or relay port: an address that
    is not this machine's would fail every request instead.
    """
    family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
    kind = socket.SOCK_DGRAM if udp else socket.SOCK_STREAM
    try:
        with socket.socket(family, kind) as probe:
            probe.bind((address, 0))
    except OSError as e:
        raise usage.UsageError(
            f"{option} {address}: cannot bind to it: {e.strerror}"
            " (it must be an address of this machine)"
        ) from None


def checker_problem(kind: str, checker: Any) -> str | None:
    """Why a strcred checker could not let anyone in (C{None}: it can)."""
    if isinstance(checker, InMemoryUsernamePasswordDatabaseDontUse) and not checker.users:
        return "names no user, so every login would fail (memory:USER:PASSWORD[:USER:PASSWORD]...)"
    if kind == "unix":
        return _unix_problem()
    return None


def _unix_problem() -> str | None:
    """Twisted's C{unix} checker needs crypt, and the shadow database readable."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            import crypt  # noqa: F401
        except ImportError:
            return "this Python has no crypt module (gone since 3.13): use file:PATH instead"
        try:
            import spwd
        except ImportError:
            return "this Python has no spwd module to read /etc/shadow: use file:PATH instead"
    # getspnam alone is not proof: where nsswitch.conf says "shadow: files
    # systemd" (Debian's default with systemd), nss-systemd answers for root
    # with a locked entry when the file cannot be read, and every real
    # account's login would then fail.  So the file first, where there is one.
    try:
        with open(SHADOW, "rb"):
            pass
    except FileNotFoundError:
        pass  # no local file: the accounts are elsewhere (spwd may reach them)
    except OSError as e:
        return f"cannot read {SHADOW}: {e.strerror} (run as root)"
    try:
        spwd.getspnam("root")
    except KeyError:
        pass
    except OSError as e:
        return f"cannot read the shadow password database: {e.strerror} (run as root)"
    return None


def ipv6_problem() -> str | None:
    """Why this machine cannot listen on IPv6 (C{None}: it can)."""
    if not socket.has_ipv6:
        return "this Python was built without IPv6"
    try:
        socket.socket(socket.AF_INET6, socket.SOCK_STREAM).close()
    except OSError as e:
        return e.strerror or str(e)
    return None


def check_gssapi(
    service: str, keytab_name: str | None, levels: frozenset[Protection], allow_nec: bool
) -> ServerSettings:
    """
    The settings of C{--gssapi}, once this machine can serve them: the
    C{gssapi} package is there, the keytab (C{keytab_name}, or the
    environment's C{KRB5_KTNAME}, else C{/etc/krb5.keytab}) is readable and
    holds a key for C{SERVICE/...@...}, and the library accepts it.  The
    server usually runs as a user other than root: a keytab it cannot read
    is said so, with whom it runs as.
    """
    from .gss import GSSFailure, MissingGSSAPI, ServerSettings, acceptor_credentials, load

    try:
        load()
    except MissingGSSAPI as e:
        raise usage.UsageError(f"--gssapi: {e}") from None
    if keytab_name is None:
        name = os.environ.get("KRB5_KTNAME") or DEFAULT_KEYTAB
        where = f"--gssapi: the keytab {escape(name)} (" + (
            "from KRB5_KTNAME)" if os.environ.get("KRB5_KTNAME") else "the default)"
        )
    else:
        name = keytab_name
        where = f"--gssapi-keytab {escape(name)}"
    path = _keytab_file(name)
    if path is not None:
        _check_keytab(where, path, service)
    settings = ServerSettings(service, name, levels, allow_nec)
    try:
        acceptor_credentials(settings)
    except GSSFailure as e:
        raise usage.UsageError(f"{where}: GSSAPI cannot accept with it: {escape(str(e))}") from None
    return settings


def _keytab_file(name: str) -> str | None:
    """
    The file of a keytab name as MIT resolves it (C{FILE:}, C{WRFILE:}, or a
    name without a type), or C{None} for another type (C{MEMORY:},
    C{KEYRING:}...), which only the library can check.
    """
    kind, colon, rest = name.partition(":")
    if not colon or name.startswith("/"):
        return name
    if kind in ("FILE", "WRFILE"):
        return rest
    return None


def _check_keytab(where: str, path: str, service: str) -> None:
    try:
        with open(path, "rb") as f:
            entries = keytab.parse(f.read(keytab.MAX_KEYTAB + 1))
    except OSError as e:
        why = e.strerror or str(e)
        if e.errno in (errno.EACCES, errno.EPERM):
            why += f" (the server runs as {_whoami()}: let it read the keytab)"
        raise usage.UsageError(f"{where}: cannot read it: {why}") from None
    except keytab.KeytabError as e:
        raise usage.UsageError(f"{where}: not a keytab: {e}") from None
    held = keytab.principals(entries)
    if not held:
        raise usage.UsageError(f"{where}: holds no key (add one for {service}/HOST@REALM)")
    if any(len(p.components) >= 2 and p.components[0] == service for p in held):
        return
    shown = ", ".join(escape(str(p)) for p in held[:SHOWN_PRINCIPALS])
    more = len(held) - SHOWN_PRINCIPALS
    if more > 0:
        shown += f" and {more} more"
    raise usage.UsageError(
        f"{where}: no key for the service {service} ({service}/HOST@REALM);"
        f" it holds {shown} (--gssapi-service names the service)"
    )


def _whoami() -> str:
    uid = os.geteuid()
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"
