"""
Live users: after SIGHUP, the running sessions of users who may no longer
use the server are closed.

A user may no longer use it when the password files (reread on SIGHUP) no
longer list them, or when the first C{[[limit]]} that matches a session
(of the rules reread on SIGHUP) says C{disabled = true}.  One line is logged
per user (or, without a login, per client address) whose sessions close.

Which users the checkers know is asked of the checkers themselves
(C{--auth file:} and C{--auth memory:}); a checker that cannot list its
users (C{--auth unix}) means no session is closed for not being listed.
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING, Any

from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.credentials import IUsernamePassword
from twisted.logger import Logger

from .auth import AnyOfCheckers, avatar_name
from .codec import Method
from .limits import limit_key
from .logsafe import escape, field
from .passwords import PasswordFile

if TYPE_CHECKING:
    from .factory import SOCKS5ServerFactory

__all__ = ["known_users", "recheck", "rematch"]

log = Logger()


def known_users(portal: Any) -> frozenset[str] | None:
    """
    The names (as sessions know them) that the portal's checkers accept
    now, or C{None} when a checker cannot say (or there is no portal).
    """
    if portal is None:
        return None
    checker = portal.checkers.get(IUsernamePassword)
    checkers = checker.checkers if isinstance(checker, AnyOfCheckers) else [checker]
    names: set[str] = set()
    for c in checkers:
        if isinstance(c, PasswordFile):
            names.update(avatar_name(user) for user in c.accounts.users)
        elif isinstance(c, InMemoryUsernamePasswordDatabaseDontUse):
            names.update(avatar_name(user) for user in c.users)
        else:
            return None
    return frozenset(names)


def recheck(factory: SOCKS5ServerFactory) -> int:
    """
    Close the sessions of users the checkers no longer know, and of keys a
    limit now disables; note each live session's limit again for the
    accounting.  Returns how many sessions were closed.
    """
    users = known_users(factory.portal)
    rules = factory.rules
    closing: dict[str, tuple[str, str, list[Any]]] = {}
    closed: collections.Counter[str] = factory.stats.closed
    for session in list(factory.sessions):
        why = reason = None
        by_password = session.method is Method.USERNAME_PASSWORD
        if by_password and users is not None and session.user not in users:
            why, reason = "no longer a user of the password files", "user-removed"
        elif session.command is not None:
            limit = rules.limit_for(session.client_ip, session.user, session.command_label)
            if limit is not None and limit.disabled:
                why, reason = f"disabled by {limit.label}", "disabled"
        if why is not None and reason is not None:
            key = limit_key(session.client_ip, session.user)
            closing.setdefault(key, (why, reason, []))[2].append(session)
    for key, (why, reason, sessions) in closing.items():
        log.warn(
            "closing {n} of {key}: {why}",
            n=f"{len(sessions)} session" + ("s" if len(sessions) != 1 else ""),
            key=field(key),
            why=why,
        )
        closed[reason] += len(sessions)
        for session in sessions:
            session.close(why)
    accountant = factory.accountant
    if accountant is not None:
        accountant.rematch(lambda s: rules.limit_for(s.client_ip, s.user, s.command_label))
    return sum(len(sessions) for _, _, sessions in closing.values())


def rematch(factory: SOCKS5ServerFactory) -> None:
    """
    The rules were replaced (a reload): each running session is matched
    again, and from now on charges its new limit's buckets at the new
    rates (its place under C{sessions} stays where it was taken); one
    whose new limit is C{disabled} is closed.
    """
    rules = factory.gate.rules
    for session in list(factory.sessions):
        if session.shaping is None or session.command is None:
            continue
        limit = rules.limit_for(session.client_ip, session.user, session.command_label)
        session.limit = limit
        session.shaping.apply(limit)
        if limit is not None and limit.disabled:
            label = escape(limit.label)
            log.warn(
                "closing the session of {client} user={user}: {limit} is disabled now",
                client=session.client_text,
                user=field(session.user),
                limit=label,
            )
            session.close(f"closed by {label}: disabled at reload")
