"""
What C{--help-auth} and C{--help-auth-type file} say.

C{--auth file:PATH} builds socks5twist's own L{PasswordFile
<socks5twist.passwords.PasswordFile>} (plain or hashed passwords, reread on
SIGHUP), not Twisted's C{FilePasswordDB}; Twisted's strcred help would
describe the latter ("in plain text").  L{AuthHelpMixin} is Twisted's
C{AuthOptionMixin} with the help of C{file} replaced; the other checkers'
help is Twisted's.
"""

from __future__ import annotations

from typing import Any

from twisted.cred.credentials import IUsernamePassword
from twisted.cred.strcred import AuthOptionMixin

__all__ = ["AuthHelpMixin", "PasswordFileHelp"]


class PasswordFileHelp:
    """C{--auth file:}, shaped as strcred's checker factories are for their help."""

    authType = "file"
    argStringFormat = "Path of a password file: user:password lines, plain or hashed."
    authHelp = """\
One account a line, user:password; the password is the rest of the line
(colons included), plain or a hash: bcrypt ($2y$, $2b$, $2a$: htpasswd -B),
SHA-512-crypt ($6$: htpasswd -5) or SHA-256-crypt ($5$: htpasswd -2).
Empty lines and lines starting with # are ignored. An error in the file
stops the start with one line naming its line; SIGHUP rereads it, and so
does a login a second after the file changed. See the README's
"Password files"."""
    credentialInterfaces = (IUsernamePassword,)


class AuthHelpMixin(AuthOptionMixin):
    """Twisted's C{--auth} options, with our help for C{file}."""

    def _checkerFactoriesForOptHelpAuth(self) -> Any:
        for factory in super()._checkerFactoriesForOptHelpAuth():
            yield PasswordFileHelp if factory.authType == "file" else factory

    def opt_help_auth_type(self, authType: str) -> None:
        """Show help for a particular authentication type."""
        if authType != "file":
            super().opt_help_auth_type(authType)  # Twisted's help; exits
            return
        self.authOutput.write(f"Usage: --auth file:PATH\n\n{PasswordFileHelp.authHelp}\n")
        raise SystemExit(0)
