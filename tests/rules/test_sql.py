"""The SQL back end: conditions become WHERE clauses that select what the rule engine would match."""

from __future__ import annotations

import sqlite3

import pytest

from sentinel.errors import RuleError
from sentinel.rules import ast
from sentinel.rules.ruleset import load_rules_text
from sentinel.rules.sql import to_sql

COLUMNS = {"proc.name": "proc_name", "fd.name": "fd_name", "evt.type": "evt_type", "user.uid": "uid",
           "proc.aname[2]": "gparent", "proc.pname": "pname"}
ROWS = [
    # proc_name, fd_name, evt_type, uid, gparent, pname
    ("bash", None, "execve", 0, "sshd", "sshd"),
    ("cat", "/etc/shadow", "openat", 1000, "sshd", "bash"),
    ("Python3", "/etc/Passwd", "openat", 0, None, "bash"),
    ("nginx", "/var/log/nginx/a.log", "openat", 33, "systemd", "systemd"),
    ("curl", None, "connect", 1000, None, None),
]


@pytest.fixture()
def db():
    connection = sqlite3.connect(":memory:")
    connection.execute("CREATE TABLE events (proc_name, fd_name, evt_type, uid INTEGER, gparent, pname)")
    connection.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?)", ROWS)
    return connection


def select(db, condition, ruleset=None) -> list[str]:
    sql, params = to_sql(condition, COLUMNS, ruleset)
    return [row[0] for row in db.execute("SELECT proc_name FROM events WHERE " + sql + " ORDER BY rowid", params)]


@pytest.mark.parametrize("condition, expected", [
    ("proc.name = bash", ["bash"]),
    ("proc.name == bash", ["bash"]),
    ("proc.name != bash", ["cat", "Python3", "nginx", "curl"]),
    ("user.uid < 1000", ["bash", "Python3", "nginx"]),
    ("user.uid <= 33 and user.uid > 0", ["nginx"]),
    ("user.uid >= 1000", ["cat", "curl"]),
    ("proc.name in (cat, curl)", ["cat", "curl"]),
    ("fd.name contains /etc/", ["cat", "Python3"]),
    ("fd.name icontains passwd", ["Python3"]),
    ("fd.name startswith /etc/s", ["cat"]),
    ("fd.name endswith .log", ["nginx"]),
    ("fd.name glob '/etc/*'", ["cat", "Python3"]),
    ("fd.name exists", ["cat", "Python3", "nginx"]),
    ("not fd.name exists", ["bash", "curl"]),
    ("not fd.name startswith /etc/", ["bash", "nginx", "curl"]),
    ("proc.aname[2] = sshd or evt.type = connect", ["bash", "cat", "curl"]),
    ("tolower(proc.name) = python3", ["Python3"]),
    ("proc.pname = val(proc.aname[2])", ["bash", "nginx"]),
    ("not (proc.name = bash or proc.name = cat)", ["Python3", "nginx", "curl"]),
])
def test_operators_select_what_the_engine_matches(db, condition, expected):
    assert select(db, condition) == expected


def test_absent_values_are_false_even_under_not(db):
    # fd.name is NULL for bash and curl: `fd.name != x` is false for them, as in the rule engine
    assert select(db, "fd.name != /etc/shadow") == ["Python3", "nginx"]


def test_literals_are_parameters_never_sql(db):
    sql, params = to_sql("proc.name = \"x' OR 1=1 --\"", COLUMNS)
    assert "OR 1=1" not in sql and params == ["x' OR 1=1 --"]
    assert select(db, "proc.name = \"x' OR 1=1 --\"") == []


def test_ast_input_and_macros_and_lists(db):
    tree = ast.all_of(ast.check("evt.type", "=", "openat"), ast.check("user.uid", "=", "0"))
    assert select(db, tree) == ["Python3"]
    ruleset = load_rules_text([("r.yaml", "- list: readers\n  items: [cat, nginx]\n- macro: opened\n  condition: evt.type = openat\n")])
    assert select(db, "opened and proc.name in (readers)", ruleset) == ["cat", "nginx"]


@pytest.mark.parametrize("condition, fragment", [
    ("proc.cmdline = x", "field 'proc.cmdline' has no column"),
    ("proc.name regex x", "operator 'regex'"),
    ("proc.name pmatch (/a)", "operator 'pmatch'"),
    ("b64(proc.name) = x", "transformer b64()"),
    ("proc.name =", "syntax error"),
    ("some_macro", "undefined macro"),
])
def test_errors_name_the_problem(condition, fragment):
    with pytest.raises(RuleError) as info:
        to_sql(condition, COLUMNS)
    assert fragment in str(info.value)
