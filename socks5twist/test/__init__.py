"""
socks5twist's unit tests (C{trial socks5twist}).

They need the C{test} extra (hypothesis, for the property tests of the codec,
the names and the rules).  Without it, importing this package fails with one
message that says how to get it, instead of a bare C{No module named
'hypothesis'} from whichever module trial happens to load first.
"""

try:
    import hypothesis  # noqa: F401
except ImportError as e:
    raise ImportError(
        "socks5twist's unit tests need the test extra: "
        "pip install 'socks5twist[test]' (hypothesis is not installed)"
    ) from e
