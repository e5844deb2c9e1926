"""Keyword rules: words or regexes that decide a category or a model before the classifier runs."""

from __future__ import annotations

import re
from dataclasses import dataclass

from services.common.config import KeywordRule


@dataclass(frozen=True)
class CompiledRule:
    rule: KeywordRule
    patterns: tuple[re.Pattern[str], ...]

    def matches(self, text: str) -> bool:
        found = (p.search(text) is not None for p in self.patterns)
        return all(found) if self.rule.operator == "all" else any(found)


def _word_pattern(keyword: str) -> str:
    # A boundary only matters on a side where the keyword itself has a word character: "```" must
    # match in "```python", "c++" in "c++17" is fine, but "contract" must not match "contractual".
    before = r"(?<!\w)" if re.match(r"\w", keyword[:1]) else ""
    after = r"(?!\w)" if re.match(r"\w", keyword[-1:]) else ""
    return before + re.escape(keyword) + after


def compile_rules(rules: list[KeywordRule]) -> list[CompiledRule]:
    """Highest priority first; equal priorities keep their config order."""
    compiled = []
    for rule in rules:
        flags = 0 if rule.case_sensitive else re.IGNORECASE
        sources = rule.keywords if rule.regex else [_word_pattern(k) for k in rule.keywords]
        compiled.append(CompiledRule(rule, tuple(re.compile(s, flags) for s in sources)))
    return sorted(compiled, key=lambda c: -c.rule.priority)


def first_match(rules: list[CompiledRule], text: str) -> KeywordRule | None:
    for compiled in rules:
        if compiled.matches(text):
            return compiled.rule
    return None
