"""Untrusted text made safe for a terminal: paths, argv and comm come from the monitored system.

A file named "\\x1b]0;pwned\\x07" or an argv holding "\\x1b[2J" must not drive the analyst's
terminal, and a path of invalid UTF-8 must still be shown exactly. `escape_for_terminal`
turns every character a terminal would act on into visible escapes:

- C0 controls, DEL and ESC as \\xNN (\\t \\n \\r as themselves, escaped),
- C1 controls, bidirectional overrides, line separators and other invisible format
  characters as \\uNNNN (so "Trojan source" reordering cannot hide text),
- undecodable bytes (bytes input, or str holding surrogateescape'd bytes) as \\xNN,
- the backslash itself as \\\\, so an escape in the output can never be forged by the input.
"""

from __future__ import annotations

_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r", "\\": "\\\\"}


def _escape_char(char: str) -> str:
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    if code < 0x80:
        return "\\x%02x" % code
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8, kept by surrogateescape
        return "\\x%02x" % (code - 0xDC00)
    if code <= 0xFFFF:
        return "\\u%04x" % code
    return "\\U%08x" % code


def escape_for_terminal(text: str | bytes) -> str:
    """Printable text unchanged (the common case costs one isprintable() scan)."""
    if isinstance(text, bytes | bytearray):
        text = bytes(text).decode("utf-8", "surrogateescape")
    if text.isprintable() and "\\" not in text:
        return text
    return "".join(char if char.isprintable() and char != "\\" else _escape_char(char) for char in text)
