"""Parser of Falco's condition language into `sentinel.rules.ast` nodes.

The grammar, as Falco's libsinsp parser reads it (blanks are space, tab, \\b, \\r, \\n):

    condition      ::= or_expr
    or_expr        ::= and_expr { "or" (blank | &"(") and_expr }
    and_expr       ::= not_expr { "and" (blank | &"(") not_expr }
    not_expr       ::= { "not" blank } ( "not(" or_expr ")" | check )
    check          ::= "(" or_expr ")"
                     | field_or_tf unary_op
                     | field_or_tf num_op ( num | rhs_transformer )
                     | field_or_tf str_op ( str | rhs_transformer )
                     | field_or_tf list_op ( list | identifier | rhs_transformer )
                     | identifier                              (a macro)
    field_or_tf    ::= field | transformer "(" field_or_tf ")"
    field          ::= fieldname [ "[" ( quoted_str | field_arg_barestr ) "]" ]
    rhs_transformer::= "val(" field ")" | transformer "(" field_or_tf ")"
    list           ::= "(" [ str { "," str } ] ")"
    str            ::= quoted_str | barestr
    unary_op       ::= "exists"
    num_op         ::= "<=" | "<" | ">=" | ">"
    str_op         ::= "==" | "=" | "!=" | ( "glob" | "iglob" | "contains" | "icontains"
                       | "bcontains" | "startswith" | "bstartswith" | "endswith" | "regex" ) blank
    list_op        ::= "intersects" | "in" | "pmatch"
    transformer    ::= "tolower" | "toupper" | "b64" | "basename" | "len"
    identifier     ::= [a-zA-Z]+ [a-zA-Z0-9_]*
    fieldname      ::= identifier ( "." [a-zA-Z]+ [a-zA-Z0-9_]* )+
    field_arg_barestr ::= [^][\"' blank]+
    num            ::= 0[xX][0-9a-zA-Z]+ | [+-]?[0-9]+[.]?[0-9]*([eE][+-][0-9]+)?
    barestr        ::= [^()\"' blank=,]+
    quoted_str     ::= '"' ... '"' | "'" ... "'"   escapes: \\b \\f \\n \\r \\t \\\\ \\/ \\<space>
                       and the delimiter itself (\\" in "-strings, \\' in '-strings)
"""

from __future__ import annotations

import re

from sentinel.rules import ast

_BLANKS = " \t\b\r\n"
_NOT_BLANK = re.compile(r"not[ \t\b\r\n]+")
_IDENTIFIER = re.compile(r"[a-zA-Z]+[a-zA-Z0-9_]*")
_FIELD_NAME = re.compile(r"[a-zA-Z]+[a-zA-Z0-9_]*(?:\.[a-zA-Z]+[a-zA-Z0-9_]*)+")
_FIELD_ARG_BARESTR = re.compile(r"[^\[\]\"' \t\b\r\n]+")
_HEX_NUM = re.compile(r"0[xX][0-9a-zA-Z]+")
_NUMBER = re.compile(r"[+\-]?[0-9]+\.?[0-9]*(?:[eE][+\-][0-9]+)?")
_BARESTR = re.compile(r"[^()\"' \t\b\r\n=,]+")

_NUM_OPS = ("<=", "<", ">=", ">")
_STR_OPS = ("==", "=", "!=", "glob ", "iglob ", "contains ", "icontains ", "bcontains ", "startswith ",
            "bstartswith ", "endswith ", "regex ")
_LIST_OPS = ("intersects", "in", "pmatch")
_TRANSFORMER_CALLS = tuple(name + "(" for name in ast.TRANSFORMERS)
_ESCAPES = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", " ": "\\", "\\": "\\", "/": "/"}
MAX_DEPTH = 100


class ConditionSyntaxError(Exception):
    """A condition cannot be parsed; `pos` says where, inside the condition text."""

    def __init__(self, message: str, pos: ast.Position) -> None:
        super().__init__(message)
        self.message = message
        self.pos = pos


def unescape(quoted: str) -> str:
    """The value of a quoted string, delimiters included in `quoted`, as Falco unescapes it."""
    delimiter = quoted[0]
    out = []
    escaped = False
    for ch in quoted[1:-1]:
        if not escaped:
            if ch == "\\":
                escaped = True
            else:
                out.append(ch)
            continue
        escaped = False
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ch in "\"'":
            if ch != delimiter:
                raise ValueError("invalid \\%s escape in %s-quoted string" % (ch, delimiter))
            out.append(ch)
        else:
            raise ValueError("unsupported string escape sequence: \\%s" % ch)
    return "".join(out)


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.index = 0
        self.depth = 0
        self.last = ""
        # line start offsets, for positions
        self._line_starts = [0] + [i + 1 for i, ch in enumerate(text) if ch == "\n"]

    # -- positions and errors --------------------------------------------------------------
    def position(self, index: int | None = None) -> ast.Position:
        index = self.index if index is None else index
        line = 0
        lo, hi = 0, len(self._line_starts) - 1
        while lo <= hi:
            mid = (lo + hi) // 2
            if self._line_starts[mid] <= index:
                line = mid
                lo = mid + 1
            else:
                hi = mid - 1
        return ast.Position(index, line + 1, index - self._line_starts[line] + 1)

    def fail(self, message: str, index: int | None = None) -> ConditionSyntaxError:
        return ConditionSyntaxError(message, self.position(index))

    def enter(self) -> None:
        self.depth += 1
        if self.depth >= MAX_DEPTH:
            raise self.fail("exceeded max depth limit of %d" % MAX_DEPTH)

    # -- lexing ----------------------------------------------------------------------------
    def blank(self) -> bool:
        start = self.index
        while self.index < len(self.text) and self.text[self.index] in _BLANKS:
            self.index += 1
        return self.index > start

    def literal(self, token: str) -> bool:
        if self.text.startswith(token, self.index):
            self.index += len(token)
            self.last = token
            return True
        return False

    def any_literal(self, tokens: tuple[str, ...]) -> bool:
        return any(self.literal(token) for token in tokens)

    def regex(self, pattern: re.Pattern[str]) -> bool:
        match = pattern.match(self.text, self.index)
        if match is None or match.end() == self.index:
            return False
        self.last = match.group(0)
        self.index = match.end()
        return True

    def quoted(self) -> bool:
        if self.index >= len(self.text) or self.text[self.index] not in "\"'":
            return False
        start = self.index
        delimiter = self.text[start]
        prev = "\\"
        i = start
        while i < len(self.text):
            ch = self.text[i]
            if ch == delimiter and prev != "\\" and i > start:
                raw = self.text[start : i + 1]
                try:
                    self.last = unescape(raw)
                except ValueError as exc:
                    raise self.fail(str(exc), start) from None
                self.index = i + 1
                return True
            # a backslash that was itself escaped must not escape the next character
            prev = "" if (ch == "\\" and prev == "\\" and i > start + 1) else ch
            i += 1
        raise self.fail("unterminated quoted string", start)

    # -- grammar ---------------------------------------------------------------------------
    def parse(self) -> ast.Expr:
        if not self.text.strip():
            raise self.fail("condition is empty")
        result = self.parse_or()
        if self.index != len(self.text):
            raise self.fail("unexpected token after '%s', expecting 'or', 'and'" % self.last)
        return result

    def parse_or(self) -> ast.Expr:
        self.enter()
        self.blank()
        children = [self.parse_and()]
        self.blank()
        while self._keyword("or"):
            children.append(self.parse_and())
            self.blank()
        self.depth -= 1
        return children[0] if len(children) == 1 else ast.Or(tuple(children))

    def parse_and(self) -> ast.Expr:
        self.enter()
        self.blank()
        children = [self.parse_not()]
        self.blank()
        while self._keyword("and"):
            children.append(self.parse_not())
            self.blank()
        self.depth -= 1
        return children[0] if len(children) == 1 else ast.And(tuple(children))

    def _keyword(self, word: str) -> bool:
        """`and`/`or` must be followed by a blank or '('."""
        start = self.index
        if not self.literal(word):
            return False
        if self.blank():
            return True
        if self.index < len(self.text) and self.text[self.index] == "(":
            return True
        self.index = start
        raise self.fail("expected blank or '(' after '%s'" % word, start + len(word))

    def parse_not(self) -> ast.Expr:
        self.enter()
        self.blank()
        negate = False
        while self.regex(_NOT_BLANK):
            negate = not negate
        if self.literal("not("):
            negate = not negate
            child = self.parse_embedded()
        else:
            child = self.parse_check()
        self.depth -= 1
        return ast.Not(child) if negate else child

    def parse_embedded(self) -> ast.Expr:
        """The rest of a parenthesised expression, after its '('."""
        self.blank()
        child = self.parse_or()
        self.blank()
        if not self.literal(")"):
            raise self.fail("expected a ')' token")
        return child

    def parse_check(self) -> ast.Expr:
        self.enter()
        self.blank()
        start = self.index
        pos = self.position()
        try:
            if self.literal("("):
                return self.parse_embedded()
            if self.regex(_FIELD_NAME):
                left = self.parse_field_rest(self.last, pos)
                return self.parse_condition(left, pos)
            if self.any_literal(_TRANSFORMER_CALLS):
                left = self.parse_transformer_rest(self.last[:-1], pos)
                return self.parse_condition(left, pos)
            if self.regex(_IDENTIFIER):
                return ast.MacroRef(self.last, pos)
            raise self.fail("expected a '(' token, a field check, or an identifier", start)
        finally:
            self.depth -= 1

    def parse_field_rest(self, name: str, pos: ast.Position) -> ast.FieldRef:
        arg = None
        if self.literal("["):
            if not (self.quoted() or self.regex(_FIELD_ARG_BARESTR)):
                raise self.fail("expected a valid field argument: a quoted string or a bare string")
            arg = self.last
            if not self.literal("]"):
                raise self.fail("expected a ']' token")
        return ast.FieldRef(name, arg, (), pos)

    def parse_transformer_rest(self, transformer: str, pos: ast.Position) -> ast.FieldRef:
        self.enter()
        self.blank()
        inner_pos = self.position()
        if self.any_literal(_TRANSFORMER_CALLS):
            inner = self.parse_transformer_rest(self.last[:-1], inner_pos)
        elif self.regex(_FIELD_NAME):
            inner = self.parse_field_rest(self.last, inner_pos)
        else:
            raise self.fail("expected a field or a nested transformer: %s" % ", ".join(ast.TRANSFORMERS))
        self.blank()
        if not self.literal(")"):
            raise self.fail("expected a ')' token closing the transformer")
        self.depth -= 1
        return ast.FieldRef(inner.name, inner.arg, (transformer,) + inner.transformers, pos)

    def parse_condition(self, left: ast.FieldRef, pos: ast.Position) -> ast.Expr:
        self.blank()
        if self.literal("exists"):
            return ast.UnaryCheck(left, "exists", pos)
        if self.any_literal(_NUM_OPS):
            op = self.last
            self.blank()
            value_pos = self.position()
            right = self.try_rhs_field()
            if right is None:
                if not (self.regex(_HEX_NUM) or self.regex(_NUMBER)):
                    raise self.fail("expected a number value or a field with a valid transformer")
                right = ast.Value(self.last, value_pos)
            return ast.BinaryCheck(left, op, right, pos)
        if self.any_literal(_STR_OPS):
            op = self.last.strip()
            self.blank()
            value_pos = self.position()
            right = self.try_rhs_field()
            if right is None:
                if not (self.quoted() or self.regex(_BARESTR)):
                    raise self.fail("expected a string value or a field with a valid transformer")
                right = ast.Value(self.last, value_pos)
            return ast.BinaryCheck(left, op, right, pos)
        if self.any_literal(_LIST_OPS):
            op = self.last
            return ast.BinaryCheck(left, op, self.parse_list_value(), pos)
        raise self.fail(
            "expected a valid check operator: one of %s" % ", ".join(ast.UNARY_OPS + ast.BINARY_OPS)
        )

    def parse_list_value(self) -> ast.Operand:
        self.blank()
        pos = self.position()
        if self.literal("("):
            items: list[str] = []
            self.blank()
            if self.quoted() or self.regex(_BARESTR):
                items.append(self.last)
                self.blank()
                while self.literal(","):
                    self.blank()
                    if not (self.quoted() or self.regex(_BARESTR)):
                        raise self.fail("expected a string value")
                    items.append(self.last)
                    self.blank()
            if not self.literal(")"):
                raise self.fail("expected a ')' token")
            return ast.ValueList(tuple(items), pos)
        right = self.try_rhs_field()
        if right is not None:
            return right
        if self.regex(_IDENTIFIER):
            return ast.ListRef(self.last, pos)
        raise self.fail("expected a list, an identifier, or a field with a valid transformer")

    def try_rhs_field(self) -> ast.FieldRef | None:
        """`val(field)` or a transformed field on the right-hand side; None if neither."""
        pos = self.position()
        if self.literal("val("):
            self.blank()
            field_pos = self.position()
            if not self.regex(_FIELD_NAME):
                raise self.fail("expected a field within 'val' transformer")
            field = self.parse_field_rest(self.last, field_pos)
            self.blank()
            if not self.literal(")"):
                raise self.fail("expected a ')' token closing the transformer")
            return ast.FieldRef(field.name, field.arg, (), pos)
        if self.any_literal(_TRANSFORMER_CALLS):
            return self.parse_transformer_rest(self.last[:-1], pos)
        return None


def parse(text: str) -> ast.Expr:
    """Parse one condition; raises ConditionSyntaxError with the position of the problem."""
    return _Parser(text).parse()
