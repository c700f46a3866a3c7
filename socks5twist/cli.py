"""
The C{socks5twist} command: C{twistd -n socks5} for an operator who does not
know twistd.  It runs in the foreground, writes no pidfile and logs to
stdout (where a terminal, a container runtime or systemd's journal takes
it); every argument is passed to C{twistd socks5} as it is, so
C{socks5twist --port 1080 --auth file:/etc/socks5/passwd} is
C{twistd -n --pidfile= --logfile=- socks5 --port 1080 --auth file:/etc/socks5/passwd}.
"""

from __future__ import annotations

import sys

__all__ = ["main", "twistd_argv"]


def twistd_argv(args: list[str]) -> list[str]:
    """The twistd command line that C{socks5twist ARGS} runs."""
    return ["twistd", "-n", "--pidfile=", "--logfile=-", "socks5", *args]


def main(args: list[str] | None = None) -> None:
    """Run C{twistd socks5} with C{args} (default: this command's own); exits."""
    from twisted.scripts.twistd import run

    sys.argv = twistd_argv(sys.argv[1:] if args is None else args)
    run()


if __name__ == "__main__":
    main()
