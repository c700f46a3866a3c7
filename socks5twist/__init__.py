"""
socks5twist: a SOCKS5 (RFC 1928, RFC 1929) server for Twisted.

Use L{SOCKS5ServerFactory} with any server endpoint, or run
C{twistd -n socks5}.
"""

from .factory import SOCKS5ServerFactory

__all__ = ["SOCKS5ServerFactory"]
__version__ = "0.1.0"
