"""The shipped /etc/sentinel/sentinel.yaml: loads as is, and documents every setting with
its true default (uncommenting all of it must change nothing)."""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path

import yaml

from sentinel import config

SHIPPED = Path(__file__).resolve().parents[2] / "packaging/config/sentinel.yaml"
# A commented setting is "#" followed by its YAML indentation (0 or 2n spaces) and a key
# or a list item; explanations are "# " and text.
COMMENTED_SETTING = re.compile(r"^#((?:  )*(?:[a-z_]+:|- ))")


def uncommented(text: str) -> str:
    return "\n".join(COMMENTED_SETTING.sub(r"\1", line) for line in text.splitlines()) + "\n"


def test_shipped_file_loads_and_changes_nothing():
    assert config.load(SHIPPED) == config.Config()


def test_every_setting_uncommented_equals_the_defaults(tmp_path):
    enabled = tmp_path / "sentinel.yaml"
    enabled.write_text(uncommented(SHIPPED.read_text()))
    assert config.load(enabled) == config.Config()


def test_every_setting_is_documented():
    written = yaml.safe_load(uncommented(SHIPPED.read_text()))
    missing = []
    for name, hint in typing.get_type_hints(config.Config).items():
        if name not in written:
            missing.append(name)
        elif dataclasses.is_dataclass(hint):
            missing += ["%s.%s" % (name, f.name) for f in dataclasses.fields(hint) if f.name not in written[name]]
    assert missing == [], "settings of sentinel.config missing from %s" % SHIPPED.name


def test_every_comment_is_either_a_setting_or_an_explanation():
    """An explanation indented like a setting would be uncommented by an admin by mistake."""
    comments = [line for line in SHIPPED.read_text().splitlines() if line.startswith("#")]
    unclear = [line for line in comments if not (COMMENTED_SETTING.match(line) or re.match(r"^#( \S.*)?$", line))]
    assert unclear == []
    assert "#rules: []" in comments and "#  ringbuf_pages: 1024" in comments
