"""escape_for_terminal: untrusted strings can neither drive a terminal nor hide what they hold."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sentinel.textsafe import escape_for_terminal


def test_printable_text_is_unchanged():
    assert escape_for_terminal("/usr/bin/curl -s https://example.test/ é 日本") == "/usr/bin/curl -s https://example.test/ é 日本"


def test_escape_and_c0_controls_are_shown_not_sent():
    assert escape_for_terminal("a\x1b]0;owned\x07b") == "a\\x1b]0;owned\\x07b"
    assert escape_for_terminal("\x00\x7f") == "\\x00\\x7f"
    assert escape_for_terminal("line1\nline2\ttab\r") == "line1\\nline2\\ttab\\r"


def test_c1_controls_and_bidi_overrides_are_escaped():
    assert escape_for_terminal("x\x9b31m") == "x\\u009b31m"  # CSI as a single C1 character
    assert escape_for_terminal("evil\u202etxt.exe") == "evil\\u202etxt.exe"
    assert escape_for_terminal("a\u2028b") == "a\\u2028b"


def test_invalid_utf8_bytes_show_as_hex():
    assert escape_for_terminal(b"/tmp/\xff\xfe\xc3\xa9") == "/tmp/\\xff\\xfeé"
    surrogates = b"/tmp/\x9b".decode("utf-8", "surrogateescape")
    assert escape_for_terminal(surrogates) == "/tmp/\\x9b"


def test_backslash_is_escaped_so_escapes_cannot_be_forged():
    assert escape_for_terminal("C:\\x1b") == "C:\\\\x1b"
    assert escape_for_terminal("a\\") != escape_for_terminal("a\x5c\x5c")


@given(st.text())
def test_output_never_holds_a_control_character(text):
    escaped = escape_for_terminal(text)
    assert all(char.isprintable() for char in escaped)


@given(st.text(), st.text())
def test_different_inputs_give_different_outputs(first, second):
    if first != second:
        assert escape_for_terminal(first) != escape_for_terminal(second)


@given(st.binary())
def test_any_bytes_escape_to_printable_text(data):
    assert all(char.isprintable() for char in escape_for_terminal(data))
