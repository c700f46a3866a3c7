"""C{python -m socks5twist ARGS}: the same as the C{socks5twist} command."""

from socks5twist.cli import main

main()
