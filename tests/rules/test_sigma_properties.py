"""Properties of the Sigma translation, checked on generated inputs."""

from __future__ import annotations

import fnmatch
import re

from hypothesis import given, settings
from hypothesis import strategies as st
from sigma.types import SigmaString

from sentinel.rules.ruleset import compile_rules
from sentinel.rules.sigma import glob_regex, load_sigma_text

# Values and texts over a small alphabet, so that matches are frequent; `[`, `]` and `.` are
# literals in Sigma (only `*` and `?` are wildcards) and must stay literals.
_ALPHABET = "aAbB/.-[] "
patterns = st.text(alphabet=_ALPHABET + "*?", max_size=8)
texts = st.text(alphabet=_ALPHABET, max_size=12)


def reference_glob(pattern: str, text: str) -> bool:
    """Sigma's wildcard match, case-insensitive, written with fnmatch (brackets escaped)."""
    escaped = "".join("[%s]" % ch if ch in "[]" else ch for ch in pattern.lower())
    return fnmatch.fnmatchcase(text.lower(), escaped)


@given(patterns, texts)
@settings(max_examples=400)
def test_wildcard_values_match_like_a_case_insensitive_glob(pattern, text):
    regex = re.compile(glob_regex(SigmaString(pattern), cased=False))
    assert (regex.search(text) is not None) == reference_glob(pattern, text)


_FIELDS = ["Image", "CommandLine", "ParentImage", "User", "ProcessId", "LogonId", "CurrentDirectory",
           "OriginalFileName", "Nonsense", "DestinationIp", "TargetFilename"]
_MODIFIERS = ["", "|contains", "|startswith", "|endswith", "|all", "|re", "|cidr", "|base64", "|base64offset",
              "|windash", "|cased", "|exists", "|gt", "|lte", "|neq", "|fieldref", "|bogus", "|contains|all"]
_VALUES = st.one_of(st.integers(-5, 70000), st.booleans(), st.none(),
                    st.text(alphabet="abi*?/\\.()[]{}| 01-", max_size=10))


@st.composite
def sigma_documents(draw):
    category = draw(st.sampled_from(["process_creation", "file_event", "network_connection", "dns_query"]))
    items = draw(st.lists(st.tuples(st.sampled_from(_FIELDS), st.sampled_from(_MODIFIERS),
                                    st.one_of(_VALUES, st.lists(_VALUES, max_size=3))), min_size=1, max_size=3))
    lines = ["title: generated", "logsource:", "    product: linux", "    category: %s" % category,
             "detection:", "    selection:"]
    for field, modifier, value in items:
        lines.append("        %s%s: %s" % (field, modifier, _yaml(value)))
    lines.append("    condition: %s" % draw(st.sampled_from(["selection", "not selection", "1 of sel*", "selection and x"])))
    return "\n".join(lines) + "\n"


def _yaml(value) -> str:
    if isinstance(value, list):
        return "[%s]" % ", ".join(_yaml(item) for item in value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return "'%s'" % value.replace("'", "''")


@given(sigma_documents())
@settings(max_examples=300, deadline=None)
def test_any_rule_loads_is_skipped_or_is_an_error_with_a_location(text):
    result = load_sigma_text(text, "generated.yml")
    assert len(result.rules) + len(result.skipped) + len(result.errors) >= 1
    for error in result.errors:
        assert error.location is not None and error.location.path == "generated.yml"
    for skip in result.skipped:
        assert skip.location.path == "generated.yml" and skip.detail
    if result.rules:  # what loads also compiles: the translation only emits valid checks
        compile_rules(result.rules)
