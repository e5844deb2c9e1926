"""The short everyday instructions the jailbreak head learns as benign (augment.everyday_instructions)."""

from __future__ import annotations

import numpy as np

from services.models import augment
from services.models.evaluate import SHORT_INSTRUCTIONS


def test_everyday_instructions_are_distinct_short_and_seeded() -> None:
    first = augment.everyday_instructions(np.random.default_rng(15), 600)
    assert len(first) == 600 and len(set(first)) == 600
    assert first == augment.everyday_instructions(np.random.default_rng(15), 600)
    assert max(len(t.split()) for t in first) <= 12


def test_everyday_instructions_hold_no_attack_wording() -> None:
    attack_words = {"ignore", "instructions", "pwned", "rules", "dan", "jailbreak", "password", "unrestricted"}
    for text in augment.everyday_instructions(np.random.default_rng(15), 600):
        assert not set(text.lower().replace(":", " ").split()) & attack_words and "system prompt" not in text.lower(), text


def test_the_cards_probe_is_mostly_worded_apart_from_the_training_family() -> None:
    # Only the four reported failures may be generated word for word (evaluate.SHORT_INSTRUCTIONS says so).
    family = {t.lower() for t in augment.everyday_instructions(np.random.default_rng(15), 5000)}
    overlap = [t for t in SHORT_INSTRUCTIONS if t.lower() in family]
    assert set(overlap) <= set(SHORT_INSTRUCTIONS[:4]), overlap
