"""
L{SOCKS5Service}: the lifecycle of one server.

- Start: listen on every port in L{privilegedStartService} (so twistd can
  bind port 1080 before dropping privileges); a port that cannot be listened
  on stops the start with L{ListenFailed}, naming it.
- SIGHUP: reread the rules file and the password files (a broken file
  leaves the old rules or users in force) and reopen the access log (after
  a log rotation); then close the running sessions of users no longer
  listed, or disabled by a limit (L{socks5twist.liveusers}).  With nothing
  to reread, one line says so.  Under twistd the handler is always
  installed, so that SIGHUP never ends a process.
- Accounting (C{--accounting}): the store is opened and read at start, and
  what is counted is written at stop, after the last session has ended.
- Stop (SIGTERM under twistd): stop accepting at once, let running sessions
  go on for C{shutdown_grace} seconds, then close what is left; a second
  SIGTERM closes them at once.  A session is closed cleanly (what was
  written is flushed, then a FIN): a client reading sees the end of its
  stream, not a reset.  Only a session whose peer has not taken its bytes
  after C{FLUSH_WAIT} seconds more is reset.
"""

from __future__ import annotations

import errno
import signal
import sys
from types import FrameType
from typing import Any, NoReturn

from twisted.application import service
from twisted.internet import defer, error
from twisted.logger import Logger, globalLogPublisher

from . import liveusers, textlog
from .accounting import StoreError, quota_without_store
from .factory import SOCKS5ServerFactory
from .logs import count
from .passwords import PasswordFile
from .rules import RulesError, load
from .textlog import SessionLineObserver
from .twistedinternals import listening_port
from .workers import WorkerPool

log = Logger()


def _exit(line: str) -> NoReturn:
    """
    End the start with C{line}: in the log (twistd has made C{sys.stderr}
    a log stream by now, which the message of C{SystemExit} goes to), and on
    the terminal's own stderr too, where an operator looks first.
    """
    terminal = sys.__stderr__
    if terminal is not None and sys.stderr is not terminal:
        print(line, file=terminal, flush=True)
    raise SystemExit(line)


class ListenFailed(Exception):
    """A port could not be listened on."""


class SOCKS5Service(service.MultiService):
    """
    The listeners of one SOCKS5 server and its factory's lifecycle.

    @ivar exit_on_listen_failure: end the process with one line instead of
        raising L{ListenFailed} (C{twistd socks5} sets it).
    @ivar handle_signals: install the SIGHUP and second-SIGTERM handlers
        (C{twistd socks5} sets it; a program embedding the service keeps its
        own signal handling).
    @ivar own_text_log: while running, write session lines to twistd's text
        log through L{socks5twist.textlog} (C{twistd socks5} sets it; a
        program embedding the service keeps its own observers).
    """

    exit_on_listen_failure = False
    handle_signals = False
    own_text_log = False
    FLUSH_WAIT = 1.0  # seconds closed sessions have to flush before they are reset
    CLOSE_WAIT = 2.0  # seconds reset sessions have to report their end

    def __init__(
        self,
        factory: SOCKS5ServerFactory,
        rules_path: str | None = None,
        shutdown_grace: float = 10.0,
    ) -> None:
        super().__init__()
        self.factory = factory
        self.rules_path = rules_path
        self.shutdown_grace = shutdown_grace
        self._previous_hup: Any = None
        self._previous_term: Any = None
        self._draining: defer.Deferred[None] | None = None
        self._force_timer: Any = None
        self._flushing = False  # the sessions were closed; the rest will be reset
        self.workers: WorkerPool | None = None
        self.worker_count = 1
        self.worker_argv: list[str] = []
        # The --auth file: checkers, reread on SIGHUP.
        self.password_files: list[PasswordFile] = []
        self._text_log: list[SessionLineObserver] = []

    # -- start -----------------------------------------------------------------

    def privilegedStartService(self) -> None:
        if self.handle_signals and self._previous_hup is None:
            # Before "listening on" is logged: whoever reads that line (a
            # supervisor, a test, the first process of --workers) may send
            # SIGHUP at once, and SIGHUP's default action ends the process.
            self._previous_hup = signal.signal(signal.SIGHUP, self._on_sighup)
        for child in self:
            try:
                child.privilegedStartService()
            except (error.CannotListenError, OSError, OverflowError) as e:
                # (OSError: a unix: socket's lock file; OverflowError: a port
                # past 65535 that an option check could not see.)
                description = getattr(child, "_description", "?")
                cause = e.socketError if isinstance(e, error.CannotListenError) else e
                reason = getattr(cause, "strerror", None) or str(cause)
                if getattr(cause, "errno", None) == errno.EACCES and _privileged(e):
                    reason += " (a port below 1024 needs root or CAP_NET_BIND_SERVICE)"
                failure = ListenFailed(f"cannot listen on {description}: {reason}")
                if self.exit_on_listen_failure:
                    _exit(f"twistd socks5: error: {failure}")
                raise failure from e
        log.info(
            "listening on {ports}",
            ports=", ".join(getattr(child, "_description", "?") for child in self),
        )
        if self.worker_count > 1:
            self._start_workers()

    def _start_workers(self) -> None:
        listeners = []
        for child in self:
            description = getattr(child, "_description", None)
            if description is None or not description.startswith(("tcp", "unix", "haproxy:")):
                continue  # the metrics endpoint, or a kind that cannot be shared
            port = listening_port(child)
            if port is not None and hasattr(port, "fileno"):
                listeners.append((port.fileno(), description))
        self.workers = WorkerPool(
            self.factory.reactor,
            self.worker_count - 1,
            self.worker_argv,
            listeners,
            stop_timeout=self.shutdown_grace + 10,
        )
        self.workers.start()

    def startService(self) -> None:
        accountant = self.factory.accountant
        if accountant is not None:
            try:
                accountant.start()
            except (StoreError, TimeoutError) as e:
                if self.exit_on_listen_failure:
                    _exit(f"twistd socks5: error: --accounting: {e}")
                raise
        super().startService()
        if self.own_text_log:
            self._text_log = textlog.install(
                globalLogPublisher, self.factory.reactor, self.factory.log.namespace
            )
        if self.handle_signals and self._previous_hup is None:
            # Even with nothing to reread: SIGHUP's default action would end
            # the process (systemctl reload would stop the service), and a
            # worker gets every SIGHUP the first process does.  (Installed
            # in privilegedStartService already, under twistd.)
            self._previous_hup = signal.signal(signal.SIGHUP, self._on_sighup)

    # -- reload ----------------------------------------------------------------

    def _on_sighup(self, signum: int, frame: FrameType | None) -> None:
        self.factory.reactor.callFromThread(self.hang_up)

    def hang_up(self) -> defer.Deferred[int]:
        """
        What SIGHUP does: reopen the access log, reread the rules and password
        files, then close the sessions of users removed or disabled.  Fires
        with how many sessions were closed.
        """
        if self.factory.access_log is None and self.rules_path is None and not self.password_files:
            log.info("SIGHUP: nothing to reread (no --rules, --auth file: or --access-log)")
        if self.factory.access_log is not None:
            self.factory.access_log.reopen()
        self.reload_rules()
        # Each in a thread; each logs its outcome.
        reloads = [password_file.reload() for password_file in self.password_files]
        return defer.gatherResults(reloads).addCallback(lambda _: liveusers.recheck(self.factory))

    def reload_rules(self) -> bool:
        """Reread the rules file (here and in every worker); on error keep the old rules."""
        if self.workers is not None:
            self.workers.signal(signal.SIGHUP)
        if self.rules_path is None:
            return False
        try:
            rules = load(self.rules_path)
        except RulesError as e:
            log.error("rules NOT reloaded, the previous rules stay in force: {error}", error=e)
            return False
        unremembered = quota_without_store(rules) if self.factory.accountant is None else None
        if unremembered is not None:
            log.error(
                "rules NOT reloaded, the previous rules stay in force: {why}"
                " (start with --accounting sqlite:PATH)",
                why=unremembered,
            )
            return False
        unconfigured = rules.unconfigured_method(
            password=self.factory.portal is not None, gssapi=self.factory.gssapi is not None
        )
        if unconfigured is not None:
            log.error(
                "rules NOT reloaded, the previous rules stay in force: {why}", why=unconfigured
            )
            return False
        self.factory.rules = rules
        log.info(
            "reloaded {path}: {rules}, default {default}",
            path=self.rules_path,
            rules=count(len(rules.rules), "rule"),
            default=rules.default.value,
        )
        return True

    # -- stop --------------------------------------------------------------------

    def stopService(self) -> defer.Deferred[None]:
        if self._previous_hup is not None:
            signal.signal(signal.SIGHUP, self._previous_hup)
            self._previous_hup = None
        if self.handle_signals:
            self._previous_term = signal.signal(signal.SIGTERM, self._on_second_sigterm)
        stopped = defer.maybeDeferred(super().stopService)
        stopped.addCallback(lambda _: self._drain())
        accountant = self.factory.accountant
        if accountant is not None:
            # After the last session: what it relayed is counted too.
            stopped.addCallback(lambda _: accountant.stop())
        waits = [stopped]
        if self.workers is not None:
            waits.append(self.workers.stop())

        def done(result: object) -> None:
            if self.factory.access_log is not None:
                self.factory.access_log.flush()
            textlog.uninstall(globalLogPublisher, self._text_log)
            self._text_log = []
            if self._previous_term is not None:
                signal.signal(signal.SIGTERM, self._previous_term)
                self._previous_term = None

        return defer.gatherResults(waits).addBoth(done)

    def _drain(self) -> defer.Deferred[None]:
        """
        Wait up to C{shutdown_grace} seconds for the sessions, then close
        them, and wait (briefly) until they have ended: a session's end is
        its log line, and the reactor must still be running for it.
        """
        open_now = len(self.factory.sessions)
        if open_now == 0:
            return defer.succeed(None)
        self._draining = defer.Deferred()
        self.factory.on_idle = self._drained
        if self.shutdown_grace <= 0:
            self._close_sessions()
        else:
            log.info(
                "stopped accepting; waiting up to {grace:g}s for {sessions} "
                "(send SIGTERM again to close them now)",
                grace=self.shutdown_grace,
                sessions=count(open_now, "session"),
            )
            reactor = self.factory.reactor
            self._force_timer = reactor.callLater(self.shutdown_grace, self._close_sessions)

        def done(result: None) -> None:
            self.factory.on_idle = None
            return result

        return self._draining.addBoth(done)

    def _on_second_sigterm(self, signum: int, frame: FrameType | None) -> None:
        self.factory.reactor.callFromThread(self._stop_now)

    def _stop_now(self) -> None:
        if self.workers is not None:
            self.workers.signal(signal.SIGTERM)
        if self._flushing:
            self._reset_sessions()
        elif self._draining is not None:
            self._close_sessions()

    def _drained(self) -> None:
        if self._force_timer is not None and self._force_timer.active():
            self._force_timer.cancel()
        self._force_timer = None
        self._flushing = False
        if self._draining is not None:
            draining, self._draining = self._draining, None
            log.info("all sessions ended; stopping")
            draining.callback(None)

    def _close_sessions(self) -> None:
        """
        Close every session, cleanly: each transport flushes what it holds,
        then sends a FIN (an abort would send a reset, and a client would
        read an error where its stream merely ended).  Those whose peers
        have not taken their bytes within L{FLUSH_WAIT} seconds are reset
        (L{_reset_sessions}); L{_drained} fires when the last has ended.
        """
        sessions = list(self.factory.sessions)
        log.info("closing {sessions} still open", sessions=count(len(sessions), "session"))
        self._flushing = True
        for session in sessions:
            session.close("server shutting down")
        self._set_timer(self.FLUSH_WAIT, self._reset_sessions)

    def _reset_sessions(self) -> None:
        """
        Reset the sessions still open (closed, but their bytes not taken).
        Their ends come a reactor turn later (an aborted transport reports its
        loss then); L{_drained} fires when the last has ended, or after
        L{CLOSE_WAIT} seconds whatever happens.
        """
        sessions = list(self.factory.sessions)
        if sessions:
            log.info(
                "resetting {sessions} whose peers did not take what was sent",
                sessions=count(len(sessions), "session"),
            )
        for session in sessions:
            session.abort("server shutting down")
        self._set_timer(self.CLOSE_WAIT, self._drained)

    def _set_timer(self, delay: float, call: Any) -> None:
        if self._force_timer is not None and self._force_timer.active():
            self._force_timer.cancel()
        self._force_timer = self.factory.reactor.callLater(delay, call)


def _privileged(e: Exception) -> bool:
    """Whether C{e} is a failure to listen on a TCP port below 1024."""
    port = getattr(e, "port", None)
    return isinstance(port, int) and 0 < port < 1024
