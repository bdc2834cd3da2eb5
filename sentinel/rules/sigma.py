"""Sigma rules (SigmaHQ Linux detections) translated into sentinel's rule AST.

pySigma parses each rule (YAML, modifiers, condition: it expands `1 of sel*`, `all of them`,
`base64offset`, `windash`, `contains`/`startswith`/`endswith` into wildcards). This module only
walks pySigma's condition tree and emits the rule engine's AST, so a Sigma rule is compiled,
indexed by event type and evaluated exactly like a Falco rule.

Sigma semantics kept here (they differ from Falco's):
- string matching is case-INSENSITIVE unless the value is `|cased` (or a `|re`, which is
  case-sensitive unless `|i`): values are lowered at load and the field goes through Falco's
  `tolower()` transformer, which the compiled bucket extracts once per event for all rules;
- `*` and `?` in plain values are wildcards (glob over the whole value; `\\*` is a literal);
- `|re` is a search (unanchored), as in every Sigma backend;
- `Field: null` matches an empty or absent value;
- keywords (values without a field) are substrings of the category's keyword fields;
- the log source category decides the event types (see sentinel.rules.sigma_fields).

The rule engine's loader sends files whose documents have top-level `detection`/`logsource`
here (`is_sigma_text`, then `sigma_rule_specs` at compile time). The engine has two fields for
Sigma (`proc.pexeline`, `evt.is_open_create`), accepts the rule source "sigma", and copies a
rule's `extra` (here: the Sigma id, level and references) into its alert records.

A rule the host cannot evaluate (unknown or unavailable field, unsupported log source or
modifier) is skipped with its reason and location, and counted; it is never loaded as a rule
that silently matches nothing.
"""

from __future__ import annotations

import collections
import functools
import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml
from sigma.collection import SigmaCollection
from sigma.conditions import (
    ConditionAND,
    ConditionFieldEqualsValueExpression,
    ConditionNOT,
    ConditionOR,
    ConditionValueExpression,
)
from sigma.exceptions import SigmaError
from sigma.rule import SigmaRule
from sigma.types import (
    CompareOperators,
    Placeholder,
    SigmaBool,
    SigmaCasedString,
    SigmaCIDRExpression,
    SigmaCompareExpression,
    SigmaExists,
    SigmaExpansion,
    SigmaFieldReference,
    SigmaNull,
    SigmaNumber,
    SigmaRegularExpression,
    SigmaRegularExpressionFlag,
    SigmaString,
    SigmaTimestampPart,
    SpecialChars,
)

from sentinel.errors import RuleError, SourceLocation
from sentinel.rules import ast
from sentinel.rules.grammar import parse as parse_condition
from sentinel.rules.loader import Problem, expand_paths
from sentinel.rules.ruleset import RuleSpec
from sentinel.rules.sigma_fields import (
    DEFAULT_LEVEL,
    IP_NETWORK_FIELDS,
    LEVEL_PRIORITY,
    LOGSOURCES,
    SUPPORTED_PRODUCT,
    Direction,
    LogSource,
    Mapped,
    Unavailable,
)

SIGMA_SOURCE = "sigma"  # RuleSpec.source of every Sigma rule

# Why a rule was skipped: stable codes (counted in the load summary) and what they mean.
SKIP_REASONS = {
    "unsupported-logsource": "the log source is not produced by sentinel's sensors",
    "unavailable-field": "a field the rule needs cannot be known on a host",
    "unknown-field": "a field outside the log source's mapping",
    "unsupported-value": "a value or modifier that has no meaning for the mapped field",
    "unsupported-rule-type": "correlation rules, filters and aggregation conditions are not evaluated",
    "unsupported-status": "the rule's status says it cannot be used as is",
}


@dataclass(frozen=True)
class SigmaSkip:
    """One Sigma rule not loaded, and why."""

    title: str
    rule_id: str
    reason: str  # a key of SKIP_REASONS
    detail: str
    location: SourceLocation

    def __str__(self) -> str:
        return "%s: sigma rule %r skipped (%s): %s" % (self.location, self.title, self.reason, self.detail)


@dataclass(frozen=True)
class SigmaRuleSpec(RuleSpec):
    """A translated Sigma rule: a RuleSpec (condition as AST) plus what Sigma says about it."""

    sigma_id: str = ""
    level: str = DEFAULT_LEVEL
    references: tuple[str, ...] = ()
    category: str = ""


@dataclass
class SigmaLoad:
    """Everything read from Sigma files: rules to add, skips to report, errors to raise."""

    rules: list[SigmaRuleSpec] = field(default_factory=list)
    skipped: list[SigmaSkip] = field(default_factory=list)
    errors: list[RuleError] = field(default_factory=list)

    def skip_counts(self) -> dict[str, int]:
        return dict(collections.Counter(skip.reason for skip in self.skipped))

    def counts(self) -> dict[str, int]:
        """For the ruleset's counts: `sigma_rules`, `sigma_skipped`, `sigma_skipped.<reason>`."""
        counts = {"sigma_rules": len(self.rules), "sigma_skipped": len(self.skipped)}
        counts.update({"sigma_skipped." + reason: n for reason, n in sorted(self.skip_counts().items())})
        return counts

    def summary(self) -> str:
        total = len(self.rules) + len(self.skipped)
        text = "sigma: %d of %d rules loaded" % (len(self.rules), total)
        counts = self.skip_counts()
        if counts:
            text += ", skipped: " + ", ".join("%d %s" % (n, reason) for reason, n in sorted(counts.items()))
        return text

    def raise_errors(self) -> None:
        if self.errors:
            raise SigmaLoadError(self.errors)


class SigmaLoadError(RuleError):
    """Sigma files with invalid rules; `errors` holds every one with its location."""

    def __init__(self, errors: list[RuleError]) -> None:
        super().__init__("\n".join(str(error) for error in errors), errors[0].location if errors else None)
        self.errors = errors

    def __str__(self) -> str:
        return self.message


class _Skip(Exception):
    """Raised inside translation; becomes a SigmaSkip with the rule's identity."""

    def __init__(self, reason: str, detail: str, field_name: str | None = None) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.field_name = field_name


def is_sigma_document(document: Any) -> bool:
    """A YAML document is a Sigma rule when it is a mapping with `detection` and `logsource`."""
    return isinstance(document, dict) and "detection" in document and "logsource" in document


_TOP_LEVEL_SIGMA_KEY = re.compile(r"^(?:detection|logsource|correlation)[ \t]*:", re.MULTILINE)


def is_sigma_text(text: str) -> bool:
    """True for YAML text holding Sigma rules (Falco files are lists of rule/macro/list items).

    A Sigma file has top-level `detection:`/`logsource:` keys (or a `correlation:`); the text is
    only parsed when such a key is written at column 0, so Falco files cost one regex search.
    """
    if not _TOP_LEVEL_SIGMA_KEY.search(text):
        return False
    try:
        documents = list(yaml.load_all(text, Loader=yaml.CSafeLoader))
    except yaml.YAMLError:
        return False
    return any(
        is_sigma_document(document) or (isinstance(document, dict) and "correlation" in document)
        for document in documents
    )


def load_sigma(paths: Iterable[str | Path], taken_names: Iterable[str] = ()) -> SigmaLoad:
    """Read and translate Sigma files and folders; never raises for one bad rule (see `errors`)."""
    result = SigmaLoad()
    names = _NameAllocator(taken_names)
    for path in expand_paths(list(paths)):
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            result.errors.append(RuleError("cannot read: %s" % exc, SourceLocation(path)))
            continue
        load_sigma_text(text, path, result, names)
    return result


def sigma_rule_specs(collection: Any, errors: list[Any], warnings: list[Any]) -> list[SigmaRuleSpec]:
    """The rule loader's hook: translate the Sigma files of a collection into RuleSpecs.

    Invalid Sigma becomes errors, skipped rules become warnings (one each, with the reason), and
    the counts of loaded and skipped rules go into `collection.sigma_counts`. Sigma rule names
    never replace Falco rules: a title already used gets the Sigma id appended.
    """
    result = SigmaLoad()
    names = _NameAllocator(collection.rules)
    for path, text in collection.sigma_sources:
        load_sigma_text(text, path, result, names)
    errors.extend(Problem(error.message, error.location or SourceLocation("<sigma>")) for error in result.errors)
    warnings.extend(
        Problem("skipped (%s): %s" % (skip.reason, skip.detail), skip.location, "sigma rule '%s'" % skip.title)
        for skip in result.skipped
    )
    collection.sigma_counts.update(result.counts())
    return result.rules


def load_sigma_text(
    text: str, path: str, result: SigmaLoad | None = None, names: _NameAllocator | None = None
) -> SigmaLoad:
    """Translate the Sigma rules of one file's text into `result` (a new one if None)."""
    result = result if result is not None else SigmaLoad()
    names = names if names is not None else _NameAllocator(())
    try:
        nodes = list(yaml.compose_all(text, Loader=yaml.CSafeLoader))
        constructor = yaml.constructor.SafeConstructor()  # per file: it caches what it built
        documents = [constructor.construct_object(node, deep=True) for node in nodes]
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = (mark.line + 1, mark.column + 1) if mark else (0, 0)
        result.errors.append(RuleError("invalid YAML: %s" % exc.problem, SourceLocation(path, *where)))
        return result
    except yaml.YAMLError as exc:
        result.errors.append(RuleError("invalid YAML: %s" % exc, SourceLocation(path)))
        return result
    try:
        collection = SigmaCollection.from_dicts(documents, collect_errors=True)
    except SigmaError as exc:  # collection-level errors (unknown action, alias bombs)
        result.errors.append(RuleError("invalid Sigma: %s" % _sigma_message(exc), SourceLocation(path, 1, 1)))
        return result
    # where each rule was written, found by (title, id): the collection may reorder its rules
    marks = {
        (str(document.get("title", "")), str(document.get("id", "")).lower()): _Marks(node)
        for node, document in zip(nodes, documents)
        if isinstance(document, dict) and document.get("action") not in ("global", "reset")
    }
    for rule in collection.rules:
        title = str(getattr(rule, "title", "") or "")
        rule_id = str(getattr(rule, "id", "") or "")
        rule_marks = marks.get((title, rule_id.lower())) or _Marks(None)
        location = SourceLocation(path, *rule_marks.rule_start)
        if not isinstance(rule, SigmaRule):
            result.skipped.append(
                SigmaSkip(title, rule_id, "unsupported-rule-type", "%s documents are not evaluated" % type(rule).__name__, location)
            )
            continue
        if rule.errors:
            for error in rule.errors:
                result.errors.append(RuleError("invalid Sigma rule %r: %s" % (title, _sigma_message(error)), location))
            continue
        try:
            result.rules.append(_translate_rule(rule, location, names))
        except _Skip as skip:
            where = rule_marks.field_location(path, skip.field_name) or location
            result.skipped.append(SigmaSkip(title, rule_id, skip.reason, skip.detail, where))
        except SigmaError as exc:
            result.errors.append(RuleError("invalid Sigma rule %r: %s" % (title, _sigma_message(exc)), location))
    return result


def _sigma_message(error: SigmaError) -> str:
    """pySigma's message without its own ' in <path>' suffix (we print file:line:col first)."""
    return str(error.args[0]) if error.args else type(error).__name__


class _Marks:
    """Line/column of a rule document and of each detection key, for skip and error locations."""

    def __init__(self, node: yaml.Node | None) -> None:
        self.rule_start = (1, 1)
        self.fields: dict[str, tuple[int, int]] = {}
        if node is None:
            return
        self.rule_start = (node.start_mark.line + 1, node.start_mark.column + 1)
        for key, value in getattr(node, "value", ()):
            if getattr(key, "value", None) in ("title",):
                self.rule_start = (key.start_mark.line + 1, key.start_mark.column + 1)
            if getattr(key, "value", None) == "detection" and isinstance(value, yaml.MappingNode):
                self._collect(value)

    def _collect(self, node: yaml.Node) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode):
                    field_name = str(key.value).split("|", 1)[0]
                    self.fields.setdefault(field_name, (key.start_mark.line + 1, key.start_mark.column + 1))
                self._collect(value)
        elif isinstance(node, yaml.SequenceNode):
            for item in node.value:
                self._collect(item)

    def field_location(self, path: str, field_name: str | None) -> SourceLocation | None:
        if field_name is None or field_name not in self.fields:
            return None
        return SourceLocation(path, *self.fields[field_name])


class _NameAllocator:
    """Rule names are titles; a title already taken gets the Sigma id appended."""

    def __init__(self, taken: Iterable[str]) -> None:
        self.taken = set(taken)

    def allocate(self, title: str, rule_id: str) -> str:
        name = title
        if name in self.taken:
            name = "%s (%s)" % (title, rule_id or "sigma")
        serial = 2
        while name in self.taken:
            name = "%s (%s #%d)" % (title, rule_id or "sigma", serial)
            serial += 1
        self.taken.add(name)
        return name


# --------------------------------------------------------------------------------------------
# Rule translation


def _translate_rule(rule: SigmaRule, location: SourceLocation, names: _NameAllocator) -> SigmaRuleSpec:
    logsource = _logsource(rule)
    status = getattr(rule.status, "name", "") if rule.status is not None else ""
    if status.lower() == "unsupported":
        raise _Skip("unsupported-status", "status 'unsupported': the rule cannot be used as written")
    for condition in rule.detection.parsed_condition:
        if "|" in condition.condition:
            raise _Skip("unsupported-rule-type", "aggregation (`| count() ...`) conditions are correlations, not evaluated")
    translator = _ConditionTranslator(logsource)
    conditions = [translator.translate(condition.parse()) for condition in rule.detection.parsed_condition]
    detection = conditions[0] if len(conditions) == 1 else _any_of(conditions)
    condition = _all_of([_base_condition(logsource.category), detection])
    level = rule.level.name.lower() if rule.level is not None else DEFAULT_LEVEL
    title = str(rule.title)
    rule_id = str(rule.id) if rule.id is not None else ""
    return SigmaRuleSpec(
        name=names.allocate(title, rule_id),
        condition=condition,
        output=_output_template(title, rule_id, logsource),
        priority=LEVEL_PRIORITY[level],
        desc=" ".join(str(rule.description or title).split()),
        tags=tuple(str(tag) for tag in rule.tags) + ("sigma",),
        sigma_id=rule_id,
        level=level,
        references=tuple(str(reference) for reference in rule.references),
        category=logsource.category,
        location=location,
        source=SIGMA_SOURCE,
        # every alert of the rule carries the Sigma identity an analyst looks up
        extra={"sigma": {"id": rule_id, "level": level, "references": [str(r) for r in rule.references]}},
    )


def _logsource(rule: SigmaRule) -> LogSource:
    source = rule.logsource
    described = ", ".join(
        "%s: %s" % (key, value)
        for key, value in (("product", source.product), ("category", source.category), ("service", source.service))
        if value
    )
    if source.product not in (None, SUPPORTED_PRODUCT):
        raise _Skip("unsupported-logsource", "log source {%s}: only product linux is monitored" % described)
    if source.service is not None:
        raise _Skip(
            "unsupported-logsource",
            "log source {%s}: service logs (auditd, syslog, sshd, ...) are not produced by sentinel's sensors" % described,
        )
    if source.category not in LOGSOURCES:
        raise _Skip(
            "unsupported-logsource",
            "log source {%s}: supported categories are %s" % (described, ", ".join(LOGSOURCES)),
        )
    return LOGSOURCES[source.category]


@functools.lru_cache(maxsize=None)
def _base_condition(category: str) -> ast.Expr:
    """The event-type condition of a log source, parsed once by the rule engine's parser."""
    return parse_condition(LOGSOURCES[category].base_condition)


def _output_template(title: str, rule_id: str, logsource: LogSource) -> str:
    # `%` starts a field in Falco output templates; a literal one in a title must not.
    safe_title = title.replace("%", "percent ")
    pairs = " ".join("%s=%%%s" % (label, name) for label, name in logsource.output_fields)
    return "%s (sigma %s) %s" % (safe_title, rule_id, pairs)


class _ConditionTranslator:
    """pySigma's post-processed condition tree -> rule engine AST, for one log source."""

    def __init__(self, logsource: LogSource) -> None:
        self.logsource = logsource

    def translate(self, node: Any) -> Any:
        if isinstance(node, ConditionAND):
            return _all_of(sorted((self.translate(arg) for arg in node.args), key=_check_cost))
        if isinstance(node, ConditionOR):
            fused = self._fuse_equalities(node.args)
            if fused is not None:
                return fused
            return _any_of([self.translate(arg) for arg in node.args])
        if isinstance(node, ConditionNOT):
            return ast.Not(self.translate(node.args[0]))
        if isinstance(node, ConditionFieldEqualsValueExpression):
            return self.field_test(node.field, node.value)
        if isinstance(node, ConditionValueExpression):
            return self.keyword_test(node.value)
        raise _Skip("unsupported-value", "condition element %s" % type(node).__name__)

    # -- fields --------------------------------------------------------------------------

    def mapping(self, sigma_field: str) -> Mapped | Direction:
        mapping = self.logsource.fields.get(sigma_field)
        if mapping is None:
            raise _Skip(
                "unknown-field",
                "field %r is not in the %s mapping (known: %s)"
                % (sigma_field, self.logsource.category, ", ".join(sorted(self.logsource.fields))),
                sigma_field,
            )
        if isinstance(mapping, Unavailable):
            raise _Skip("unavailable-field", "field %r: %s" % (sigma_field, mapping.reason), sigma_field)
        return mapping

    def field_test(self, sigma_field: str, value: Any) -> Any:
        mapping = self.mapping(sigma_field)
        if isinstance(mapping, Direction):
            return self.direction_test(sigma_field, mapping, value)
        if isinstance(value, SigmaExpansion):
            return _any_of([self.field_test(sigma_field, item) for item in value.values])
        try:
            return self._value_test(mapping, value)
        except _Skip as skip:
            skip.field_name = skip.field_name or sigma_field
            skip.detail = "field %r: %s" % (sigma_field, skip.detail)
            raise

    def direction_test(self, sigma_field: str, mapping: Direction, value: Any) -> Any:
        text = str(value.boolean if isinstance(value, SigmaBool) else value).strip().lower()
        if text not in ("true", "false"):
            raise _Skip("unsupported-value", "field %r takes 'true' or 'false', not %r" % (sigma_field, text), sigma_field)
        types = mapping.initiated_types if text == "true" else mapping.accepted_types
        return _compare("evt.type", "in", list(types))

    def _value_test(self, mapping: Mapped, value: Any) -> Any:
        name = mapping.field
        if isinstance(value, SigmaExists):
            test = _exists(name)
            return test if value.exists else ast.Not(test)
        if isinstance(value, SigmaNull):
            if mapping.is_text:
                return _any_of([ast.Not(_exists(name)), _compare(name, "=", "")])
            return ast.Not(_exists(name))
        if isinstance(value, SigmaCompareExpression):
            if mapping.kind != "number":
                raise _Skip("unsupported-value", "numeric comparison on a %s field" % mapping.kind)
            return _compare(name, _COMPARE_OPS[value.op], _number(value.number))
        if isinstance(value, SigmaFieldReference):
            other = self.mapping(value.field)
            if not isinstance(other, Mapped) or other.is_text != mapping.is_text or (
                not mapping.is_text and other.kind != mapping.kind
            ):
                raise _Skip("unsupported-value", "fieldref between fields of different types (%r)" % value.field)
            op = "startswith" if value.starts_with else "endswith" if value.ends_with else "="
            if value.starts_with and value.ends_with:
                op = "contains"
            return _compare_field(name, op, other.field)
        if isinstance(value, SigmaCIDRExpression):
            if mapping.kind != "ip":
                raise _Skip("unsupported-value", "cidr on a field that is not an IP address")
            return _compare(IP_NETWORK_FIELDS[name], "in", [str(value.network)])
        if isinstance(value, SigmaRegularExpression):
            if mapping.kind == "number":
                raise _Skip("unsupported-value", "regular expression on a numeric field")
            return _compare(name, "regex", sigma_regex_pattern(value))
        if isinstance(value, SigmaTimestampPart):
            raise _Skip("unsupported-value", "timestamp part modifiers (minute, hour, ...) have no event time field here")
        if isinstance(value, SigmaNumber):
            if mapping.kind == "number":
                return _compare(name, "=", _number(value))
            if mapping.kind == "ip":
                raise _Skip("unsupported-value", "%s is not an IP address" % value.number)
            return self._string_test(name, SigmaString(str(value.number)), cased=False)
        if isinstance(value, SigmaBool):
            if not mapping.is_text:
                raise _Skip("unsupported-value", "boolean value on a %s field" % mapping.kind)
            return self._string_test(name, SigmaString(str(value.boolean).lower()), cased=False)
        if isinstance(value, SigmaString):
            if mapping.kind == "number":
                return self._number_string_test(name, value)
            if mapping.kind == "ip":
                return self._ip_string_test(name, value)
            cased = isinstance(value, SigmaCasedString)
            if mapping.kind == "path" and not cased:
                component = _last_component(value)
                if component is not None:  # `/usr/bin/x` ends with `/x` <=> its last component is `x`
                    return _compare(_lowered_basename(name), "=", component)
            return self._string_test(name, value, cased)
        raise _Skip("unsupported-value", "value type %s" % type(value).__name__)

    def _number_string_test(self, name: str, value: SigmaString) -> Any:
        if value.contains_special():
            raise _Skip("unsupported-value", "wildcards on a numeric field")
        text = str(value)
        try:
            return _compare(name, "=", int(text))
        except ValueError:
            raise _Skip("unsupported-value", "%r is not a number" % text) from None

    def _ip_string_test(self, name: str, value: SigmaString) -> Any:
        if not value.contains_special():
            text = str(value)
            try:
                ipaddress.ip_address(text)
            except ValueError:
                raise _Skip("unsupported-value", "%r is not an IP address" % text) from None
            return _compare(name, "=", text)
        # addresses have no case (IPv6 is rendered in lower case): plain string checks on them
        shape, text = string_shape(value)
        if shape == "any":
            return _exists(name)
        if shape == "glob":
            return _compare(name, "regex", glob_regex(value, cased=False))
        return _compare(name, _SHAPE_OPS[shape], text.lower())

    def _string_test(self, name: str, value: SigmaString, cased: bool) -> Any:
        shape, text = string_shape(value)
        if shape == "any":
            return _exists(name)
        if shape == "glob":
            return _compare(name, "regex", glob_regex(value, cased))
        if cased:
            return _compare(name, _SHAPE_OPS[shape], text)
        # tolower(F) is extracted once per event and shared by every rule (icontains would
        # lower the value again for each check)
        return _compare(_lowered(name), _SHAPE_OPS[shape], text.lower())

    def _fuse_equalities(self, args: list[Any]) -> Any | None:
        """The values of one field, OR-ed, as set lookups where their shape allows it.

        `F: [a, b]` becomes `tolower(F) in (a, b)`, and on path fields `F|endswith: [/a, /b]`
        becomes `tolower(basename(F)) in (a, b)` (a path ends with `/a` exactly when its last
        component is `a`): one lookup instead of one check per value. Other values stay checks.
        """
        if len(args) < 2 or not all(isinstance(arg, ConditionFieldEqualsValueExpression) for arg in args):
            return None
        fields = {arg.field for arg in args}
        if len(fields) != 1:
            return None
        (sigma_field,) = fields
        mapping = self.mapping(sigma_field)
        if not isinstance(mapping, Mapped) or not mapping.is_text:
            return None
        equals: list[str] = []
        basenames: list[str] = []
        others: list[Any] = []
        for arg in args:
            shape, text = string_shape(arg.value) if type(arg.value) is SigmaString else ("other", "")
            if shape == "equals":
                equals.append(text.lower())
            elif mapping.kind == "path" and _last_component(arg.value) is not None:
                basenames.append(_last_component(arg.value))
            else:
                others.append(arg)
        if len(equals) + len(basenames) < 2:
            return None
        checks = []
        if equals:
            checks.append(_compare(_lowered(mapping.field), "in", equals))
        if basenames:
            checks.append(_compare(_lowered_basename(mapping.field), "in", basenames))
        checks.extend(self.translate(arg) for arg in others)
        return _any_of(checks)

    # -- keywords ------------------------------------------------------------------------

    def keyword_test(self, value: Any) -> Any:
        if not self.logsource.keyword_fields:
            raise _Skip("unsupported-value", "keywords: log source %s has no message field" % self.logsource.category)
        if isinstance(value, SigmaExpansion):
            return _any_of([self.keyword_test(item) for item in value.values])
        if isinstance(value, SigmaNumber):
            value = SigmaString(str(value.number))
        if isinstance(value, SigmaString):
            value = _as_substring(value)
        elif not isinstance(value, SigmaRegularExpression):
            raise _Skip("unsupported-value", "keyword of type %s" % type(value).__name__)
        return _any_of([self.field_test(name, value) for name in self.logsource.keyword_fields])


_COMPARE_OPS = {
    CompareOperators.LT: "<",
    CompareOperators.LTE: "<=",
    CompareOperators.GT: ">",
    CompareOperators.GTE: ">=",
    CompareOperators.NEQ: "!=",
}
_SHAPE_OPS = {"equals": "=", "contains": "contains", "startswith": "startswith", "endswith": "endswith"}


def _number(value: SigmaNumber) -> int | float:
    return value.number


def _as_substring(value: SigmaString) -> SigmaString:
    """A keyword matches anywhere in the message: wrap it in `*` unless it already is."""
    wrapped = SigmaString()
    wrapped.s = list(value.s)
    if not value.startswith(SpecialChars.WILDCARD_MULTI):
        wrapped = SpecialChars.WILDCARD_MULTI + wrapped
    if not value.endswith(SpecialChars.WILDCARD_MULTI):
        wrapped = wrapped + SpecialChars.WILDCARD_MULTI
    if isinstance(value, SigmaCasedString):
        return SigmaCasedString.from_sigma_string(wrapped)
    return wrapped


def string_shape(value: SigmaString) -> tuple[str, str]:
    """Classify a Sigma string: equals / contains / startswith / endswith (with its literal
    text), `any` for a lone `*`, or `glob` when wildcards sit inside the value."""
    parts = list(value.s)
    for part in parts:
        if isinstance(part, Placeholder):
            raise _Skip("unsupported-value", "placeholder %%%s%% needs a processing pipeline" % part.name)
    leading = bool(parts) and parts[0] == SpecialChars.WILDCARD_MULTI
    if leading:
        parts = parts[1:]
    trailing = bool(parts) and parts[-1] == SpecialChars.WILDCARD_MULTI
    if trailing:
        parts = parts[:-1]
    if not all(isinstance(part, str) for part in parts):
        return "glob", ""
    text = "".join(parts)
    if not text:
        return ("any", "") if leading or trailing else ("equals", "")
    if leading and trailing:
        return "contains", text
    if leading:
        return "endswith", text
    if trailing:
        return "startswith", text
    return "equals", text


def glob_regex(value: SigmaString, cased: bool) -> str:
    """A Sigma wildcard value as an anchored regex (`*` any run, `?` one character)."""
    pieces = []
    for part in value.s:
        if part == SpecialChars.WILDCARD_MULTI:
            pieces.append(".*")
        elif part == SpecialChars.WILDCARD_SINGLE:
            pieces.append(".")
        else:
            pieces.append(re.escape(part))
    flags = "(?s)" if cased else "(?is)"
    return _anchored_regex(flags, "".join(pieces))


def sigma_regex_pattern(value: SigmaRegularExpression) -> str:
    """A Sigma `|re` value (an unanchored search) with its i/m/s flags inline."""
    flags = "".join(
        letter
        for flag, letter in (
            (SigmaRegularExpressionFlag.IGNORECASE, "i"),
            (SigmaRegularExpressionFlag.MULTILINE, "m"),
            (SigmaRegularExpressionFlag.DOTALL, "s"),
        )
        if flag in value.flags
    )
    pattern = str(value.regexp.original) if hasattr(value.regexp, "original") else str(value.regexp)
    # a leading `(?i)` in the pattern is a global flag: it must stay in front of the wrapping
    leading = _LEADING_FLAGS.match(pattern)
    if leading:
        flags += leading.group(1)
        pattern = pattern[leading.end():]
    wrapped = _search_regex("".join(sorted(set(flags))), pattern)
    try:
        re.compile(wrapped)
    except re.error as exc:
        raise _Skip("unsupported-value", "regular expression %r: %s" % (value.regexp.original, exc)) from None
    return wrapped


_LEADING_FLAGS = re.compile(r"\(\?([aiLmsux]+)\)")


# --------------------------------------------------------------------------------------------
# AST construction: the only place that knows the rule engine's node shapes.


def _all_of(children: list[Any]) -> Any:
    flat = [grandchild for child in children for grandchild in (child.children if isinstance(child, ast.And) else (child,))]
    return ast.all_of(*flat)


def _any_of(children: list[Any]) -> Any:
    flat = [grandchild for child in children for grandchild in (child.children if isinstance(child, ast.Or) else (child,))]
    return ast.any_of(*flat)


def _exists(name: str) -> Any:
    return ast.check(name, "exists")


def _lowered(name: str) -> ast.FieldRef:
    return ast.field(name, None, "tolower")


def _lowered_basename(name: str) -> ast.FieldRef:
    return ast.field(name, None, "tolower", "basename")


def _last_component(value: Any) -> str | None:
    """`x` for a case-insensitive `*/x` value (endswith '/x', x without '/'), else None."""
    if type(value) is not SigmaString:
        return None
    shape, text = string_shape(value)
    if shape != "endswith" or not text.startswith("/") or len(text) < 2 or "/" in text[1:]:
        return None
    return text[1:].lower()


# Evaluation order inside an AND (it is commutative here: checks have no side effects): set
# lookups and equalities first, then prefix/suffix checks, substrings, and regexes last.
_OP_COST = {"=": 0, "in": 0, "exists": 0, "startswith": 1, "endswith": 1, "contains": 2, "regex": 3}


def _check_cost(node: Any) -> int:
    if isinstance(node, ast.BinaryCheck):
        return _OP_COST.get(node.op, 2)
    if isinstance(node, ast.UnaryCheck):
        return 0
    return 4 if not isinstance(node, ast.Not) else 1 + _check_cost(node.child)


def _compare(target: str | ast.FieldRef, op: str, value: Any) -> Any:
    if isinstance(value, list):
        return ast.check(target, op, [str(item) for item in value])
    return ast.check(target, op, str(value))


def _compare_field(name: str, op: str, other: str) -> Any:
    return ast.check(name, op, ast.field(other))


def _anchored_regex(flags: str, body: str) -> str:
    """A regex that must match the whole value, whatever the engine's regex semantics."""
    return "%s\\A(?:%s)\\Z" % (flags, body)


def _search_regex(flags: str, pattern: str) -> str:
    """A regex that may match anywhere in the value (Sigma `|re` is a search); the engine's
    `regex` matches the whole value, as Falco's does, so the pattern is wrapped."""
    return ("(?%s)" % flags if flags else "") + "(?s:.*?)(?:%s)(?s:.*)" % pattern
