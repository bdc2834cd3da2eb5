"""Second back end: a condition as an SQLite WHERE clause with parameters, to query the store.

    sql, params = to_sql("proc.name in (bash, sh) and fd.name startswith /etc/",
                         {"proc.name": "proc_name", "fd.name": "fd_name"})
    rows = db.execute("SELECT * FROM events WHERE " + sql, params)

The column mapping comes from the store. Semantics follow the rule engine: a comparison on an
absent value (NULL) is false, also under `not`, so every check is written
`(col IS NOT NULL AND ...)`. Literals are always parameters, never spliced into the SQL.
"""

from __future__ import annotations

from typing import Any, Mapping

from sentinel.errors import RuleError, SourceLocation
from sentinel.rules import ast, grammar
from sentinel.rules.compiler import NUMERIC_TYPES, CompileError, resolve_field

SUPPORTED_OPS = ("=", "==", "!=", "<", "<=", ">", ">=", "in", "contains", "icontains", "startswith", "endswith", "glob", "exists")
_SQL_TRANSFORMERS = {"tolower": "lower", "toupper": "upper", "len": "length"}


class _Translator:
    def __init__(self, columns: Mapping[str, str], lists: Mapping[str, tuple[str, ...]], macros: Mapping[str, ast.Expr]) -> None:
        self.columns = columns
        self.lists = lists
        self.macros = macros
        self.params: list[Any] = []

    def fail(self, message: str, pos: ast.Position | None) -> RuleError:
        if pos is None:
            return RuleError(message)
        return RuleError(message, SourceLocation("<condition>", pos.line, pos.col))

    def column(self, ref: ast.FieldRef) -> tuple[str, str]:
        """(SQL expression, field type) of a field reference."""
        name = self.columns.get(ref.key)
        if name is None:
            raise self.fail("field '%s' has no column in the store" % ref.key, ref.pos)
        try:
            definition, _ = resolve_field(ref)
            field_type = definition.type
        except CompileError:
            field_type = "string"
        expression = '"%s"' % name.replace('"', '""')
        for transformer in reversed(ref.transformers):
            function = _SQL_TRANSFORMERS.get(transformer)
            if function is None:
                raise self.fail("transformer %s() has no SQL equivalent" % transformer, ref.pos)
            expression = "%s(%s)" % (function, expression)
            if transformer == "len":
                field_type = "int"
        return expression, field_type

    def param(self, text: str, field_type: str) -> str:
        value: Any = text
        if field_type in NUMERIC_TYPES:
            try:
                value = int(text, 0)
            except ValueError:
                value = text
        elif field_type == "bool":
            value = {"true": 1, "false": 0}.get(text.lower(), text)
        self.params.append(value)
        return "?"

    def translate(self, node: ast.Expr) -> str:
        if isinstance(node, ast.And):
            return "(%s)" % " AND ".join(self.translate(c) for c in node.children)
        if isinstance(node, ast.Or):
            return "(%s)" % " OR ".join(self.translate(c) for c in node.children)
        if isinstance(node, ast.Not):
            return "(NOT %s)" % self.translate(node.child)
        if isinstance(node, ast.Constant):
            return "1" if node.value else "0"
        if isinstance(node, ast.MacroRef):
            macro = self.macros.get(node.name)
            if macro is None:
                raise self.fail("undefined macro '%s'" % node.name, node.pos)
            return self.translate(macro)
        if isinstance(node, ast.UnaryCheck):
            column, _ = self.column(node.field)
            return "(%s IS NOT NULL)" % column
        assert isinstance(node, ast.BinaryCheck)
        return self.check(node)

    def items(self, value: ast.Operand) -> list[str]:
        if isinstance(value, ast.Value):
            return [value.text]
        if isinstance(value, ast.ListRef):
            return list(self.lists.get(value.name, (value.name,)))
        assert isinstance(value, ast.ValueList)
        result: list[str] = []
        for item in value.items:
            result.extend(self.lists.get(item, (item,)))
        return result

    def check(self, node: ast.BinaryCheck) -> str:
        op = "=" if node.op == "==" else node.op
        if op not in SUPPORTED_OPS:
            raise self.fail("operator '%s' has no SQL translation" % node.op, node.pos)
        column, field_type = self.column(node.field)
        if isinstance(node.value, ast.FieldRef):
            other, _ = self.column(node.value)
            if op not in ("=", "!=", "<", "<=", ">", ">="):
                raise self.fail("operator '%s' does not take val()" % op, node.pos)
            return "(%s IS NOT NULL AND %s IS NOT NULL AND %s %s %s)" % (column, other, column, op, other)
        items = self.items(node.value)
        guard = "%s IS NOT NULL AND " % column
        if op == "in" or isinstance(node.value, (ast.ValueList, ast.ListRef)):
            if op not in ("in", "="):
                raise self.fail("operator '%s' takes one value, not a list" % op, node.pos)
            if not items:
                return "0"
            marks = ", ".join(self.param(item, field_type) for item in items)
            return "(%s%s IN (%s))" % (guard, column, marks)
        text = items[0]
        if op in ("=", "!=", "<", "<=", ">", ">="):
            return "(%s%s %s %s)" % (guard, column, op, self.param(text, field_type))
        if op == "contains":
            return "(%sinstr(%s, %s) > 0)" % (guard, column, self.param(text, "string"))
        if op == "icontains":
            return "(%sinstr(lower(%s), %s) > 0)" % (guard, column, self.param(text.lower(), "string"))
        if op == "startswith":
            self.params.append(len(text))
            return "(%ssubstr(%s, 1, ?) = %s)" % (guard, column, self.param(text, "string"))
        if op == "endswith":
            if not text:
                return "(%s1)" % guard
            self.params.append(-len(text))
            return "(%ssubstr(%s, ?) = %s)" % (guard, column, self.param(text, "string"))
        if op == "glob":
            return "(%s%s GLOB %s)" % (guard, column, self.param(text, "string"))
        raise self.fail("operator '%s' has no SQL translation" % op, node.pos)


def to_sql(
    condition: str | ast.Expr,
    columns: Mapping[str, str],
    ruleset: Any = None,
) -> tuple[str, list[Any]]:
    """A WHERE clause and its parameters for a condition (text or AST).

    `columns` maps field names (`proc.name`, `proc.aname[2]`) to column names; a field without
    a column is a RuleError naming it. With `ruleset`, its macros and lists may be used.
    """
    if isinstance(condition, str):
        try:
            condition = grammar.parse(condition)
        except grammar.ConditionSyntaxError as exc:
            raise RuleError("syntax error: %s" % exc.message, SourceLocation("<condition>", exc.pos.line, exc.pos.col)) from None
    lists = getattr(ruleset, "lists", {}) if ruleset is not None else {}
    macros = getattr(ruleset, "macros", {}) if ruleset is not None else {}
    translator = _Translator(columns, lists, macros)
    sql = translator.translate(condition)
    return sql, translator.params
