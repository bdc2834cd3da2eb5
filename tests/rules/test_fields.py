"""The field registry: complete for the upstream rules and Sigma, documented, and docs/fields.md current."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from sentinel.rules import ast, fields
from sentinel.rules.compiler import bind_field, resolve_field
from sentinel.rules.testcases import build_event

REPO = Path(__file__).resolve().parents[2]
UPSTREAM_DIR = REPO.parent / "shared" / "compat" / "falco"
_FIELD_IN_TEXT = re.compile(r"(?<![\w./:-])((?:proc|evt|fd|user|group|container|k8s|thread|fs)\.[a-zA-Z0-9_.]*[a-zA-Z0-9_])(\[[^\]]*\])?")


def upstream_field_names() -> set[str]:
    """Every field named in the conditions, outputs and exceptions of the upstream files."""
    names = set()
    for path in UPSTREAM_DIR.glob("*.yaml"):
        for item in yaml.load(path.read_text(), Loader=yaml.CSafeLoader):
            texts = [str(item.get(key, "")) for key in ("condition", "output")]
            texts += [str(exc.get("fields")) for exc in item.get("exceptions", []) or []]
            for text in texts:
                for match in _FIELD_IN_TEXT.finditer(text):
                    names.add(match.group(1) + (match.group(2) or ""))
    return names


def test_every_field_of_the_upstream_files_is_known():
    found = upstream_field_names()
    assert len(found) > 80
    for name in sorted(found):
        base, _, arg = name.partition("[")
        ref = ast.FieldRef(base, arg[:-1] if arg else None)
        bind_field(ref)  # raises CompileError for an unknown field or a bad argument


@pytest.mark.parametrize("name", [
    "proc.exepath", "proc.cmdline", "proc.pexepath", "proc.pcmdline", "user.name", "proc.cwd", "fd.name",
    "fd.rip", "fd.rport", "fd.lip", "fd.lport", "evt.type", "fd.sip.name", "proc.pid", "proc.ppid",
])
def test_fields_sigma_needs(name):
    resolve_field(ast.FieldRef(name))


def test_every_field_says_where_its_value_comes_from():
    for definition in fields.all_fields():
        assert definition.doc and definition.source, definition.name
        if definition.extract is fields._absent or (definition.arg == "required" and definition.name.startswith(("k8s.", "container.mount"))):
            assert fields.NOT_ON_HOST in definition.source, definition.name


def test_host_unavailable_fields_are_absent():
    event = build_event({"type": "execve", "proc": {"name": "bash"}})
    for name in ("k8s.ns.name", "k8s.pod.name", "container.image.repository", "container.privileged", "fd.sip.name"):
        assert bind_field(ast.FieldRef(name)).extract(event) is None, name
    assert bind_field(ast.FieldRef("container.mount.dest", "/etc")).extract(event) is None
    assert bind_field(ast.FieldRef("container.id")).extract(event) == "host"


def test_docs_field_map_is_current():
    generated = fields.markdown()
    assert (REPO / "docs" / "fields.md").read_text() == generated, "run: sentinel rules fields --markdown > docs/fields.md"
    assert "| `k8s.ns.name` | string |" in generated
    assert "not available on a host" in generated
