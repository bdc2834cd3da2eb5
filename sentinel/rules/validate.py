"""`sentinel rules validate`: load rule files, report counts, errors and warnings with locations."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from sentinel.rules.loader import Problem, RuleLoadError, collect_files
from sentinel.rules.ruleset import compile_collection


@dataclass
class Validation:
    files: list[str]
    counts: dict[str, int] = field(default_factory=dict)
    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    interest: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "files": self.files,
            "counts": self.counts,
            "errors": [problem.as_dict() for problem in self.errors],
            "warnings": [problem.as_dict() for problem in self.warnings],
            "interest": self.interest,
        }

    def text(self) -> str:
        lines = [str(problem) + " (error)" for problem in self.errors]
        lines += [str(problem) + " (warning)" for problem in self.warnings]
        if self.interest:
            prefixes = self.interest["open_path_prefixes"]
            opens = ("every open" if prefixes is None else
                     "opens under %d path prefix(es) or by %d program name(s)" % (len(prefixes), len(self.interest["open_comms"])))
            selectors = self.interest.get("open_selectors")
            if selectors:
                opens += "; every open selected by %s" % ", ".join(selectors)
            any_path = self.interest.get("open_any_path")
            if any_path is not None:
                opens += "; any path when selected by %s" % (", ".join(any_path) or "nothing")
            lines.append("capture: %d event type(s); %s" % (len(self.interest["event_types"]), opens))
            lines += ["  " + reason for reason in self.interest["reasons"]]
        counts = self.counts
        lines.append(
            "%s: %d file(s), %d rules (%d enabled), %d macros, %d lists (as written: %d rules, %d macros, %d lists); "
            "%d error(s), %d warning(s)" % (
                "ok" if self.ok else "invalid", len(self.files), counts.get("rules", 0), counts.get("enabled_rules", 0),
                counts.get("macros", 0), counts.get("lists", 0), counts.get("raw_rules", 0), counts.get("raw_macros", 0),
                counts.get("raw_lists", 0), len(self.errors), len(self.warnings)))
        if "sigma_rules" in counts:
            reasons = ", ".join(
                "%d %s" % (n, key.split(".", 1)[1]) for key, n in sorted(counts.items()) if key.startswith("sigma_skipped.")
            )
            lines.append("sigma: %d rules loaded, %d skipped%s" % (
                counts["sigma_rules"], counts["sigma_skipped"], " (%s)" % reasons if reasons else ""))
        return "\n".join(lines)


def validate(paths: Sequence[str]) -> Validation:
    collection = collect_files(list(paths))
    result = Validation(files=list(collection.files))
    result.counts = {
        "rules": len(collection.rules),
        "enabled_rules": sum(1 for rule in collection.rules.values() if rule.enabled),
        "macros": len(collection.macros),
        "lists": len(collection.lists),
    }
    result.counts.update({"raw_%ss" % kind: count for kind, count in collection.raw_counts.items()})
    try:
        ruleset = compile_collection(collection)
    except RuleLoadError as exc:
        result.errors = exc.errors
        result.warnings = exc.warnings
        return result
    finally:
        result.counts.update(collection.sigma_counts)  # Sigma files: loaded / skipped per reason
    result.warnings = ruleset.warnings
    interest = ruleset.interest
    result.interest = {
        "event_types": sorted(interest.event_types),
        "open_path_prefixes": None if interest.open_path_prefixes is None else list(interest.open_path_prefixes),
        "open_comms": sorted(interest.open_comms),
        "open_created": interest.open_created,
        "open_selectors": interest.open_selectors.as_dict(),
        "open_any_path": None if interest.open_any_path is None else interest.open_any_path.as_dict(),
        "reasons": list(interest.reasons),
    }
    return result
