"""The condition parser: Falco's grammar, positions of errors, and rendering back to text."""

from __future__ import annotations

import pytest

from sentinel.rules import ast
from sentinel.rules.grammar import ConditionSyntaxError, parse, unescape


def roundtrip(text: str) -> str:
    return ast.render(parse(text))


def test_precedence_not_binds_tighter_than_and_tighter_than_or():
    tree = parse("a or b and not c")
    assert tree == ast.Or((ast.MacroRef("a"), ast.And((ast.MacroRef("b"), ast.Not(ast.MacroRef("c"))))))


def test_parentheses_and_not_paren():
    assert roundtrip("not(a or b)") == "not (a or b)"
    assert roundtrip("(a and (b or c))") == "a and (b or c)"


def test_double_not_cancels_like_falco():
    assert parse("not not a") == ast.MacroRef("a")


@pytest.mark.parametrize("op", ["=", "==", "!=", "contains", "icontains", "bcontains", "startswith",
                                "bstartswith", "endswith", "glob", "iglob", "regex"])
def test_string_operators(op):
    tree = parse("proc.name %s abc" % op)
    assert tree == ast.BinaryCheck(ast.FieldRef("proc.name"), op, ast.Value("abc"))


@pytest.mark.parametrize("op", ["<", "<=", ">", ">="])
def test_numeric_operators_take_numbers(op):
    assert parse("fd.num %s 0x10" % op) == ast.BinaryCheck(ast.FieldRef("fd.num"), op, ast.Value("0x10"))
    assert parse("fd.num%s-1" % op).value == ast.Value("-1")
    with pytest.raises(ConditionSyntaxError):
        parse("fd.num %s abc" % op)


@pytest.mark.parametrize("op", ["in", "intersects", "pmatch"])
def test_list_operators(op):
    tree = parse("proc.name %s (a, 'b c', \"d\")" % op)
    assert tree == ast.BinaryCheck(ast.FieldRef("proc.name"), op, ast.ValueList(("a", "b c", "d")))
    assert parse("proc.name %s shells" % op).value == ast.ListRef("shells")
    assert parse("proc.name %s ()" % op).value == ast.ValueList(())


def test_exists():
    assert parse("proc.pname exists") == ast.UnaryCheck(ast.FieldRef("proc.pname"))


def test_field_arguments():
    assert parse("proc.aname[2] = bash").field == ast.FieldRef("proc.aname", "2")
    assert parse("container.mount.dest[/etc] exists").field == ast.FieldRef("container.mount.dest", "/etc")
    assert parse("evt.arg[0] = x").field == ast.FieldRef("evt.arg", "0")
    assert parse('proc.env["HOME"] = x').field == ast.FieldRef("proc.env", "HOME")
    assert parse("evt.arg.flags contains O_TRUNC").field == ast.FieldRef("evt.arg.flags")


def test_transformers_and_val():
    tree = parse("tolower(proc.name) = bash")
    assert tree.field == ast.FieldRef("proc.name", None, ("tolower",))
    nested = parse("len(basename(fd.name)) > 3")
    assert nested.field == ast.FieldRef("fd.name", None, ("len", "basename"))
    assert ast.render(nested) == "len(basename(fd.name)) > 3"
    compared = parse("proc.name = val(proc.pname)")
    assert compared.value == ast.FieldRef("proc.pname")
    assert ast.render(compared) == "proc.name = val(proc.pname)"
    assert parse("fd.name startswith toupper(proc.cwd)").value == ast.FieldRef("proc.cwd", None, ("toupper",))


def test_bare_strings_stop_at_falco_delimiters():
    assert parse("evt.dir = <").value == ast.Value("<")
    assert parse("fd.name startswith /etc/").value == ast.Value("/etc/")
    assert parse("proc.name=runc:[1:CHILD]").value == ast.Value("runc:[1:CHILD]")
    assert parse("(proc.name=a)").value == ast.Value("a")


def test_quoted_strings_and_escapes():
    assert parse(r'proc.cmdline = "a \"quoted\" \\ word"').value == ast.Value('a "quoted" \\ word')
    assert parse(r"proc.cmdline = 'it\'s'").value == ast.Value("it's")
    assert parse(r'proc.cmdline = "tab\there"').value == ast.Value("tab\there")
    assert unescape(r'"a\/b"') == "a/b"
    with pytest.raises(ValueError):
        unescape(r'"\q"')
    with pytest.raises(ConditionSyntaxError) as info:
        parse(r"proc.name = 'a\"b'")
    assert "escape" in info.value.message


def test_and_or_need_a_blank_or_parenthesis():
    assert parse("a and(b)") == ast.And((ast.MacroRef("a"), ast.MacroRef("b")))
    with pytest.raises(ConditionSyntaxError):
        parse("a andb")


@pytest.mark.parametrize("text, line, col, fragment", [
    ("", 1, 1, "empty"),
    ("proc.name = ", 1, 13, "string value"),
    ("proc.name foo bar", 1, 11, "operator"),
    ("(a and b", 1, 9, "')'"),
    ("a and\n  proc.name in (a, b", 2, 21, "')'"),
    ("a b", 1, 3, "unexpected token"),
    ("proc.name = 'abc", 1, 13, "unterminated"),
    ("proc.aname[2 = x", 1, 13, "']'"),
])
def test_errors_have_positions(text, line, col, fragment):
    with pytest.raises(ConditionSyntaxError) as info:
        parse(text)
    assert fragment in info.value.message
    assert (info.value.pos.line, info.value.pos.col) == (line, col)


def test_render_round_trips_odd_values():
    for text in ['proc.name in ("a b", "c,d", "(x)", "it\'s", "")', "fd.name = \"\\\\server\"", 'proc.cmdline contains "and"']:
        tree = parse(text)
        assert parse(ast.render(tree)) == tree


def test_depth_limit_is_an_error_not_a_crash():
    with pytest.raises(ConditionSyntaxError):
        parse("(" * 500 + "a" + ")" * 500)


def test_builders_for_other_front_ends():
    tree = ast.all_of(ast.check("proc.name", "in", ["bash", "sh"]), ast.check("fd.name", "exists"),
                      ast.any_of(ast.check(ast.field("proc.cmdline", None, "tolower"), "contains", "curl")))
    assert ast.render(tree) == "proc.name in (bash, sh) and fd.name exists and tolower(proc.cmdline) contains curl"
    with pytest.raises(ValueError):
        ast.check("proc.name", "like", "x")
