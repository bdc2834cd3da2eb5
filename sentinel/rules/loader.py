"""Reading and collecting rule files: the first two of the loader's three stages.

1. read: each file is parsed as YAML keeping node positions; every item is checked against
   its schema (unknown keys are warnings, wrong types and missing keys are errors).
2. collect: items are applied in file order: a later list/macro/rule with the same name
   replaces the earlier one; `override` (append/replace per key) and the deprecated
   `append: true` modify an earlier definition.
3. compile (`sentinel.rules.compiler`): names are resolved once everything is collected.

Every problem of every file is gathered; nothing is compiled if there is any error.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sentinel.errors import RuleError, SourceLocation

try:
    _Loader = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - pyyaml built without libyaml
    _Loader = yaml.SafeLoader

# The version of Falco's rule engine whose language this one implements (what the upstream
# files require); a file that requires a newer one is refused.
ENGINE_VERSION = (0, 57, 0)

PRIORITIES = ("emergency", "alert", "critical", "error", "warning", "notice", "informational", "debug")
_PRIORITY_ALIASES = {"info": "informational"}
ACTIONS = ("kill", "deny")
MODES = ("enforce", "audit")

_RULE_KEYS = {
    "rule", "desc", "condition", "output", "priority", "tags", "enabled", "exceptions", "source",
    "append", "override", "warn_evttypes", "skip-if-unknown-filter", "capture", "capture_duration",
    "action", "mode",
}
_MACRO_KEYS = {"macro", "condition", "append", "override", "source"}
_LIST_KEYS = {"list", "items", "append", "override"}
_EXCEPTION_KEYS = {"name", "fields", "comps", "values", "append"}
_RULE_OVERRIDABLE = {
    "append": {"condition", "output", "desc", "tags", "exceptions"},
    "replace": {"condition", "output", "desc", "priority", "tags", "exceptions", "enabled", "warn_evttypes",
                "skip-if-unknown-filter", "capture", "capture_duration", "action", "mode"},
}


@dataclass(frozen=True)
class Problem:
    """One error or warning, with where it is and which item it concerns."""

    message: str
    location: SourceLocation
    item: str = ""  # "rule 'Name'", "macro 'name'", ...

    def __str__(self) -> str:
        if self.item:
            return "%s: %s: %s" % (self.location, self.item, self.message)
        return "%s: %s" % (self.location, self.message)

    def as_dict(self) -> dict[str, Any]:
        return {
            "message": self.message,
            "file": self.location.path,
            "line": self.location.line,
            "col": self.location.col,
            "item": self.item,
        }


class RuleLoadError(RuleError):
    """Rule files could not be loaded; `errors` holds every problem found, `warnings` the rest."""

    def __init__(self, errors: list[Problem], warnings: list[Problem] | None = None) -> None:
        first = errors[0]
        more = "" if len(errors) == 1 else " (and %d more error%s)" % (len(errors) - 1, "" if len(errors) == 2 else "s")
        super().__init__((first.item + ": " if first.item else "") + first.message + more, first.location)
        self.errors = errors
        self.warnings = warnings or []

    def report(self) -> str:
        return "\n".join(str(problem) for problem in self.errors)


@dataclass
class Text:
    """A condition or output text, with enough of its YAML origin to locate offsets in the file."""

    segments: list[tuple[int, str, yaml.Node, str]]  # (offset in text, path, scalar node, file text)

    def locate(self, text: str, offset: int) -> SourceLocation:
        """file:line:col of character `offset` of the combined `text`."""
        start, path, node, source = self.segments[0]
        for segment in self.segments:
            if segment[0] <= offset:
                start, path, node, source = segment
        mark = node.start_mark
        begin, end = mark.index, node.end_mark.index
        local = offset - start
        # Find the token at `offset` inside the scalar's raw text; fall back to the scalar start.
        token = text[offset: offset + 24].split("\n")[0].strip()
        after = 0  # point just after the token: used at the end of the text
        if not token and text[:offset].strip():
            token = text[:offset].split()[-1][-24:]
            after = len(token)
            local = max(local - after, 0)
        index = -1
        if token:
            raw = source[begin:end]
            # the n-th occurrence closest to the proportional place in the raw text
            guess = begin + min(local, max(len(raw) - 1, 0))
            candidates = []
            position = raw.find(token)
            while position >= 0:
                candidates.append(begin + position)
                position = raw.find(token, position + 1)
            if candidates:
                index = min(candidates, key=lambda c: abs(c - guess))
        if index < 0:
            return SourceLocation(path, mark.line + 1, mark.column + 1)
        index += after
        line = source.count("\n", 0, index) + 1
        col = index - (source.rfind("\n", 0, index) + 1) + 1
        return SourceLocation(path, line, col)


@dataclass
class ListDef:
    name: str
    items: list[str]
    location: SourceLocation
    index: int = 0


@dataclass
class MacroDef:
    name: str
    condition: str
    text: Text
    location: SourceLocation
    index: int = 0


@dataclass
class ExceptionDef:
    name: str
    fields: str | list[str]
    comps: str | list[str] | None
    values: list[Any]
    location: SourceLocation


@dataclass
class RuleDef:
    name: str
    location: SourceLocation
    condition: str = ""
    condition_text: Text | None = None
    output: str = ""
    output_text: Text | None = None
    desc: str = ""
    priority: str = "debug"
    tags: list[str] = field(default_factory=list)
    enabled: bool = True
    exceptions: list[ExceptionDef] = field(default_factory=list)
    source: str = "syscall"
    action: str | None = None
    mode: str | None = None
    warn_evttypes: bool = True
    skip_if_unknown_filter: bool = False
    index: int = 0


@dataclass
class Collection:
    """The result of the collect stage: the definitions in effect, in definition order."""

    lists: dict[str, ListDef] = field(default_factory=dict)
    macros: dict[str, MacroDef] = field(default_factory=dict)
    rules: dict[str, RuleDef] = field(default_factory=dict)
    required_engine_version: str = ""
    required_plugin_versions: list[dict[str, Any]] = field(default_factory=list)
    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    sigma_sources: list[tuple[str, str]] = field(default_factory=list)  # (path, text), see sentinel.rules.sigma
    sigma_counts: dict[str, int] = field(default_factory=dict)  # loaded / skipped per reason
    raw_counts: dict[str, int] = field(default_factory=lambda: {"rule": 0, "macro": 0, "list": 0})
    _counter: int = 0

    def next_index(self) -> int:
        self._counter += 1
        return self._counter


class _Constructor(yaml.constructor.SafeConstructor):
    """Falco's YAML reader takes `=` (YAML's "value" tag) as the string it looks like."""


_Constructor.add_constructor("tag:yaml.org,2002:value", yaml.constructor.SafeConstructor.construct_yaml_str)
_constructor = _Constructor()


def _value(node: yaml.Node) -> Any:
    return _constructor.construct_object(node, deep=True)


def _location(path: str, node: yaml.Node) -> SourceLocation:
    return SourceLocation(path, node.start_mark.line + 1, node.start_mark.column + 1)


def expand_paths(paths: list[str | os.PathLike[str]]) -> list[str]:
    """Files as given; folders contribute their *.yaml/*.yml files in name order (not recursive
    into `tests` folders, which hold rule test cases)."""
    result: list[str] = []
    for entry in paths:
        path = Path(entry)
        if path.is_dir():
            # recursive (Sigma repositories keep rules in category folders), as the agent reads them
            for child in sorted(path.rglob("*")):
                if child.is_file() and child.suffix in (".yaml", ".yml") and "tests" not in child.relative_to(path).parts:
                    result.append(str(child))
        else:
            result.append(str(path))
    return result


def collect(sources: list[tuple[str, str]]) -> Collection:
    """Read and collect (path, text) pairs in order; problems are gathered in the result."""
    collection = Collection()
    from sentinel.rules.sigma import is_sigma_text  # imported here: sigma builds on the ruleset

    for path, text in sources:
        collection.files.append(path)
        if is_sigma_text(text):  # translated at compile time, beside the Falco rules
            collection.sigma_sources.append((path, text))
            continue
        _read_file(collection, path, text)
    return collection


def collect_files(paths: list[str | os.PathLike[str]]) -> Collection:
    sources = []
    errors = []
    for path in expand_paths(paths):
        try:
            sources.append((path, Path(path).read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError) as exc:
            errors.append(Problem("cannot read rule file: %s" % exc, SourceLocation(path)))
    collection = collect(sources)
    collection.errors[:0] = errors
    return collection


def _read_file(collection: Collection, path: str, text: str) -> None:
    try:
        root = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        location = SourceLocation(path, mark.line + 1, mark.column + 1) if mark else SourceLocation(path)
        collection.errors.append(Problem("invalid YAML: %s" % (exc.problem or exc), location))
        return
    except yaml.YAMLError as exc:
        collection.errors.append(Problem("invalid YAML: %s" % exc, SourceLocation(path)))
        return
    if root is None:
        return
    if not isinstance(root, yaml.SequenceNode):
        collection.errors.append(Problem("a rules file must be a YAML list of items", _location(path, root)))
        return
    for item in root.value:
        reader = _ItemReader(collection, path, text, item)
        try:
            reader.read()
        except _ItemInvalid:
            pass
        except yaml.YAMLError as exc:  # a value YAML cannot construct (e.g. an unknown !tag)
            mark = getattr(exc, "problem_mark", None) or item.start_mark
            collection.errors.append(Problem("invalid YAML value: %s" % (getattr(exc, "problem", None) or exc),
                                             SourceLocation(path, mark.line + 1, mark.column + 1), reader.label))


class _ItemInvalid(Exception):
    """Raised after the item's problems were recorded, to skip the rest of it."""


class _ItemReader:
    def __init__(self, collection: Collection, path: str, source: str, node: yaml.Node) -> None:
        self.collection = collection
        self.path = path
        self.source = source
        self.node = node
        self.label = ""
        self.nodes: dict[str, yaml.Node] = {}
        self.keys: dict[str, yaml.Node] = {}

    # -- problems --------------------------------------------------------------------------
    def error(self, message: str, node: yaml.Node | None = None) -> None:
        self.collection.errors.append(Problem(message, _location(self.path, node or self.node), self.label))

    def warn(self, message: str, node: yaml.Node | None = None) -> None:
        self.collection.warnings.append(Problem(message, _location(self.path, node or self.node), self.label))

    def fail(self, message: str, node: yaml.Node | None = None) -> _ItemInvalid:
        self.error(message, node)
        return _ItemInvalid()

    # -- typed access ----------------------------------------------------------------------
    def string(self, key: str, required: bool = False, allow_number: bool = False) -> str | None:
        node = self.nodes.get(key)
        if node is None:
            if required:
                raise self.fail("missing required key '%s'" % key)
            return None
        if not isinstance(node, yaml.ScalarNode):
            raise self.fail("'%s' must be a string" % key, node)
        value = _value(node)
        if value is None:
            if required:
                raise self.fail("'%s' must not be empty" % key, node)
            return ""
        if isinstance(value, bool) or (not allow_number and not isinstance(value, str) and key not in ("desc", "output")):
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise self.fail("'%s' must be a string" % key, node)
        return str(value)

    def boolean(self, key: str) -> bool | None:
        node = self.nodes.get(key)
        if node is None:
            return None
        value = _value(node) if isinstance(node, yaml.ScalarNode) else None
        if not isinstance(value, bool):
            raise self.fail("'%s' must be true or false" % key, node)
        return value

    def string_list(self, key: str) -> list[str] | None:
        node = self.nodes.get(key)
        if node is None:
            return None
        if not isinstance(node, yaml.SequenceNode):
            raise self.fail("'%s' must be a list" % key, node)
        result = []
        for child in node.value:
            if not isinstance(child, yaml.ScalarNode):
                raise self.fail("items of '%s' must be strings" % key, child)
            value = _value(child)
            if value is None:
                raise self.fail("items of '%s' must not be empty" % key, child)
            if isinstance(value, bool):
                value = "true" if value else "false"
            result.append(str(value))
        return result

    def text(self, key: str) -> Text:
        node = self.nodes[key]
        return Text([(0, self.path, node, self.source)])

    # -- items -----------------------------------------------------------------------------
    def read(self) -> None:
        if not isinstance(self.node, yaml.MappingNode):
            raise self.fail("each item must be a mapping with one of: rule, macro, list, required_engine_version, required_plugin_versions")
        for key_node, value_node in self.node.value:
            key = _value(key_node) if isinstance(key_node, yaml.ScalarNode) else None
            if not isinstance(key, str):
                raise self.fail("keys must be strings", key_node)
            if key in self.nodes:
                self.error("duplicate key '%s'" % key, key_node)
            self.nodes[key] = value_node
            self.keys[key] = key_node
        for kind in ("rule", "macro", "list"):
            if kind in self.nodes:
                return getattr(self, "read_" + kind)()
        if "required_engine_version" in self.nodes:
            node = self.nodes["required_engine_version"]
            value = _value(node)
            required = _engine_version(value)
            if required is None:
                raise self.fail("required_engine_version must be a version like 0.57.0", node)
            if required > ENGINE_VERSION:
                raise self.fail("requires engine version %s; this engine implements %s"
                                % (value, ".".join(map(str, ENGINE_VERSION))), node)
            self.collection.required_engine_version = str(value)
            return None
        if "required_plugin_versions" in self.nodes:
            node = self.nodes["required_plugin_versions"]
            value = _value(node)
            if not isinstance(value, list) or not all(isinstance(v, dict) and "name" in v for v in value):
                raise self.fail("'required_plugin_versions' must be a list of {name, version}", node)
            self.collection.required_plugin_versions.extend(value)
            return None
        raise self.fail("unknown item: expected one of rule, macro, list, required_engine_version, required_plugin_versions")

    def check_keys(self, allowed: set[str]) -> None:
        for key, key_node in self.keys.items():
            if key not in allowed:
                self.warn("unknown key '%s' (ignored)" % key, key_node)

    def override_spec(self, allowed: dict[str, set[str]]) -> dict[str, str]:
        node = self.nodes.get("override")
        if node is None:
            return {}
        if not isinstance(node, yaml.MappingNode):
            raise self.fail("'override' must map keys to 'append' or 'replace'", node)
        spec: dict[str, str] = {}
        for key_node, value_node in node.value:
            key, how = _value(key_node), _value(value_node)
            if how not in ("append", "replace"):
                raise self.fail("override of '%s' must be 'append' or 'replace'" % key, value_node)
            if key not in allowed[how]:
                raise self.fail("key '%s' cannot be overridden with '%s'" % (key, how), key_node)
            if key not in self.nodes:
                raise self.fail("override of '%s' but the item has no '%s'" % (key, key), key_node)
            spec[key] = how
        if "append" in self.nodes:
            raise self.fail("'override' and 'append' cannot be used together", node)
        return spec

    def read_list(self) -> None:
        name = self.string("list", required=True)
        self.label = "list '%s'" % name
        self.collection.raw_counts["list"] += 1
        self.check_keys(_LIST_KEYS)
        spec = self.override_spec({"append": {"items"}, "replace": {"items"}})
        items = self.string_list("items")
        append = self.boolean("append")
        if items is None:
            raise self.fail("missing required key 'items'")
        lists = self.collection.lists
        location = _location(self.path, self.node)
        if append or spec.get("items") == "append":
            if name not in lists:
                raise self.fail("list has 'append' but no list by that name is defined earlier")
            lists[name].items.extend(items)
        elif spec.get("items") == "replace":
            if name not in lists:
                raise self.fail("list has 'override' but no list by that name is defined earlier")
            lists[name].items = items
        else:
            lists.pop(name, None)
            lists[name] = ListDef(name, items, location, self.collection.next_index())

    def read_macro(self) -> None:
        name = self.string("macro", required=True)
        self.label = "macro '%s'" % name
        self.collection.raw_counts["macro"] += 1
        self.check_keys(_MACRO_KEYS)
        spec = self.override_spec({"append": {"condition"}, "replace": {"condition"}})
        condition = self.string("condition", required=True, allow_number=True)
        append = self.boolean("append")
        macros = self.collection.macros
        text = self.text("condition")
        if append or spec.get("condition") == "append":
            if name not in macros:
                raise self.fail("macro has 'append' but no macro by that name is defined earlier")
            _append_text(macros[name], "condition", "text", condition, text)
        elif spec.get("condition") == "replace":
            if name not in macros:
                raise self.fail("macro has 'override' but no macro by that name is defined earlier")
            macros[name].condition, macros[name].text = condition, text
        else:
            macros.pop(name, None)
            macros[name] = MacroDef(name, condition, text, _location(self.path, self.node), self.collection.next_index())

    def read_rule(self) -> None:
        name = self.string("rule", required=True)
        self.label = "rule '%s'" % name
        self.collection.raw_counts["rule"] += 1
        self.check_keys(_RULE_KEYS)
        spec = self.override_spec(_RULE_OVERRIDABLE)
        append = self.boolean("append")
        rules = self.collection.rules
        location = _location(self.path, self.node)
        values = self.rule_values()
        if append or spec:
            if name not in rules:
                raise self.fail("rule has '%s' but no rule by that name is defined earlier" % ("append" if append else "override"))
            target = rules[name]
            if append:
                spec = {key: "append" for key in ("condition", "exceptions", "output", "desc") if key in values}
                spec.update({key: "replace" for key in ("enabled",) if key in values})
            for key, how in spec.items():
                value = values[key]
                if how == "append":
                    if key == "condition":
                        _append_text(target, "condition", "condition_text", value, self.text("condition"))
                    elif key == "exceptions":
                        _append_exceptions(target, value, self)
                    elif key == "tags":
                        target.tags.extend(t for t in value if t not in target.tags)
                    else:
                        setattr(target, key, (getattr(target, key) + " " + value).strip())
                else:
                    setattr(target, _attribute(key), value)
                    if key in ("condition", "output"):
                        setattr(target, key + "_text", self.text(key))
            return
        if set(values) <= {"enabled"} and name in rules:
            # the deprecated form that only switches an existing rule on or off
            if "enabled" in values:
                rules[name].enabled = values["enabled"]
            return
        missing = [key for key in ("condition", "output", "desc", "priority") if key not in values]
        if missing:
            raise self.fail("missing required key%s %s" % ("s" if len(missing) > 1 else "", ", ".join("'%s'" % m for m in missing)))
        # a redefinition takes the place of the rule it replaces, as in Falco (order matters for
        # match=first)
        index = rules[name].index if name in rules else self.collection.next_index()
        rule = RuleDef(name, location, index=index)
        for key, value in values.items():
            setattr(rule, _attribute(key), value)
        rule.condition_text = self.text("condition")
        if "output" in self.nodes:
            rule.output_text = self.text("output")
        rules[name] = rule

    def rule_values(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for key in ("condition", "output", "desc", "source"):
            value = self.string(key, allow_number=True)
            if value is not None:
                values[key] = value.strip() if key == "output" else value
        priority = self.string("priority")
        if priority is not None:
            normalized = _PRIORITY_ALIASES.get(priority.lower(), priority.lower())
            if normalized not in PRIORITIES:
                raise self.fail("invalid priority '%s' (one of %s)" % (priority, ", ".join(PRIORITIES)), self.nodes["priority"])
            values["priority"] = normalized
        tags = self.string_list("tags")
        if tags is not None:
            values["tags"] = tags
        for key in ("enabled", "warn_evttypes", "skip-if-unknown-filter", "capture"):
            flag = self.boolean(key)
            if flag is not None:
                values[key] = flag
        for key, allowed in (("action", ACTIONS), ("mode", MODES)):
            value = self.string(key)
            if value is not None:
                if value not in allowed:
                    raise self.fail("invalid %s '%s' (one of %s)" % (key, value, ", ".join(allowed)), self.nodes[key])
                values[key] = value
        if "exceptions" in self.nodes:
            values["exceptions"] = self.read_exceptions(self.nodes["exceptions"])
        return values

    def read_exceptions(self, node: yaml.Node) -> list[ExceptionDef]:
        if not isinstance(node, yaml.SequenceNode):
            raise self.fail("'exceptions' must be a list", node)
        result = []
        for item in node.value:
            if not isinstance(item, yaml.MappingNode):
                raise self.fail("each exception must be a mapping with name, fields, comps, values", item)
            data = {}
            for key_node, value_node in item.value:
                key = _value(key_node)
                if key not in _EXCEPTION_KEYS:
                    self.warn("unknown exception key '%s' (ignored)" % key, key_node)
                data[key] = (value_node, _value(value_node))
            where = _location(self.path, item)
            if "name" not in data or not isinstance(data["name"][1], str):
                raise self.fail("exception needs a 'name'", item)
            name = data["name"][1]
            fields = data.get("fields", (None, None))[1]
            comps = data.get("comps", (None, None))[1]
            values = data.get("values", (None, []))[1] or []
            if fields is None and data.get("append", (None, False))[1] is not True:
                raise self.fail("exception '%s' needs 'fields'" % name, item)
            if fields is not None and not (isinstance(fields, str) or (isinstance(fields, list) and all(isinstance(f, str) for f in fields))):
                raise self.fail("exception '%s': 'fields' must be a field name or a list of field names" % name, data["fields"][0])
            if isinstance(fields, list):
                if comps is not None and (not isinstance(comps, list) or len(comps) != len(fields)):
                    raise self.fail("exception '%s': 'comps' must be a list as long as 'fields'" % name, data["comps"][0])
                if not isinstance(values, list):
                    raise self.fail("exception '%s': 'values' must be a list" % name, data["values"][0])
                for value in values:
                    if not isinstance(value, list) or len(value) != len(fields):
                        raise self.fail("exception '%s': each value must be a list of %d item%s (one per field)"
                                        % (name, len(fields), "" if len(fields) == 1 else "s"), data["values"][0])
            elif isinstance(fields, str):
                if comps is not None and not isinstance(comps, str):
                    raise self.fail("exception '%s': 'comps' must be one operator when 'fields' is one field" % name, data["comps"][0])
                if not isinstance(values, list):
                    raise self.fail("exception '%s': 'values' must be a list" % name, data["values"][0])
            result.append(ExceptionDef(name, fields, comps, values, where))
        return result


def _engine_version(value: Any) -> tuple[int, int, int] | None:
    """`0.57.0` as (0, 57, 0); a bare number N (the old form) as (0, N, 0)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return (0, value, 0)
    parts = str(value).strip().split(".")
    if len(parts) != 3 or not all(part.isdigit() for part in parts):
        return None
    return (int(parts[0]), int(parts[1]), int(parts[2]))


def _attribute(key: str) -> str:
    return key.replace("-", "_")


def _append_text(target: Any, attribute: str, text_attribute: str, addition: str, text: Text) -> None:
    """Falco appends condition text with a single space between the two."""
    combined = getattr(target, attribute) + " "
    old: Text | None = getattr(target, text_attribute)
    segments = list(old.segments) if old is not None else []
    segments.append((len(combined), text.segments[0][1], text.segments[0][2], text.segments[0][3]))
    setattr(target, attribute, combined + addition)
    setattr(target, text_attribute, Text(segments))


def _append_exceptions(rule: RuleDef, additions: list[ExceptionDef], reader: _ItemReader) -> None:
    """Appended exceptions with a known name add values to it; new names are added whole."""
    by_name = {exc.name: exc for exc in rule.exceptions}
    for exc in additions:
        if exc.name in by_name:
            by_name[exc.name].values.extend(exc.values)
        elif exc.fields is None:
            reader.error("exception '%s' appends values to an exception the rule does not have" % exc.name)
        else:
            rule.exceptions.append(exc)
            by_name[exc.name] = exc
