"""Stand-ins for the Triton client in guard unit tests: deterministic, no network."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from services.common.model_io import SAFETY_LABELS
from services.common.triton import ModelNotAvailableError, TritonUnavailableError

# Windows of the fake scorer, in characters (the real client's are the tokenizer's CHUNKS rows).
WINDOW_CHARS = 256
WINDOW_OVERLAP_CHARS = 64


@dataclass(frozen=True)
class Span:
    start: int
    end: int
    label: str
    score: float


class KeywordScorer:
    """Scores 0.97 for texts containing a trigger phrase, 0.02 otherwise; records what it was sent."""

    def __init__(self, triggers: Sequence[str] = ("ignore previous instructions", "you are dan")) -> None:
        self.triggers = [t.lower() for t in triggers]
        self.calls: list[list[str]] = []
        self.window_calls: list[list[str]] = []

    async def jailbreak_scores(self, texts: list[str]) -> list[float]:
        self.calls.append(list(texts))
        # Like the real client, a long text is seen only by its head and tail.
        seen = [text if len(text) <= 400 else text[:200] + text[-200:] for text in texts]
        return [self._score(text) for text in seen]

    async def jailbreak_window_scores(self, texts: list[str]) -> list[list[float]]:
        windows = [char_windows(text) for text in texts]
        self.window_calls.append([w for per_text in windows for w in per_text])
        return [[self._score(w) for w in per_text] for per_text in windows]

    def _score(self, text: str) -> float:
        return 0.97 if any(t in text.lower() for t in self.triggers) else 0.02


def char_windows(text: str) -> list[str]:
    """Overlapping slices of a text longer than one window; none for a shorter text."""
    if len(text) <= WINDOW_CHARS:
        return []
    step = WINDOW_CHARS - WINDOW_OVERLAP_CHARS
    return [text[start:start + WINDOW_CHARS] for start in range(0, len(text) - WINDOW_OVERLAP_CHARS, step)]


class CategoryScorer:
    """Safety probabilities: texts containing a phrase get its harm category at `score`, the rest are safe."""

    def __init__(self, phrases: dict[str, str] | None = None, score: float = 0.9) -> None:
        self.phrases = {k.lower(): v for k, v in (phrases or {"pipe bomb": "violence_weapons",
                                                              "nerve agent": "chem_bio"}).items()}
        self.score = score
        self.calls: list[list[str]] = []

    async def safety_probabilities(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        out = np.zeros((len(texts), len(SAFETY_LABELS)), dtype=np.float32)
        for row, text in enumerate(texts):
            category = next((c for p, c in self.phrases.items() if p in text.lower()), None)
            if category is None:
                out[row, 0] = 1.0
            else:
                out[row, 0] = 1.0 - self.score
                out[row, SAFETY_LABELS.index(category)] = self.score
        return out


class NoSafetyModel:
    """A model repository without safety_classifier (the per-task layout)."""

    async def safety_probabilities(self, texts: list[str]) -> np.ndarray:
        raise ModelNotAvailableError("safety_classifier: Triton says 'unknown model'; build the repository")


class NameTagger:
    """Tags every occurrence of the given names as PERSON with the given score."""

    def __init__(self, names: Sequence[str] = (), score: float = 0.9) -> None:
        self.names = list(names)
        self.score = score
        self.calls: list[list[str]] = []

    async def tag_pii(self, texts: list[str]) -> list[list[Span]]:
        self.calls.append(list(texts))
        out: list[list[Span]] = []
        for text in texts:
            spans = []
            for name in self.names:
                start = text.find(name)
                while start != -1:
                    spans.append(Span(start, start + len(name), "PERSON", self.score))
                    start = text.find(name, start + 1)
            out.append(spans)
        return out


class DownTriton:
    """Every model call fails the way the real client does when Triton is not running."""

    async def jailbreak_scores(self, texts: list[str]) -> list[float]:
        raise TritonUnavailableError("jailbreak_classifier: cannot reach Triton at 127.0.0.1:1; is tritonserver running?")

    async def jailbreak_window_scores(self, texts: list[str]) -> list[list[float]]:
        raise TritonUnavailableError("jailbreak_classifier: cannot reach Triton at 127.0.0.1:1; is tritonserver running?")

    async def safety_probabilities(self, texts: list[str]) -> np.ndarray:
        raise TritonUnavailableError("safety_classifier: cannot reach Triton at 127.0.0.1:1; is tritonserver running?")

    async def tag_pii(self, texts: list[str]) -> list[list[Span]]:
        raise TritonUnavailableError("pii_tagger: cannot reach Triton at 127.0.0.1:1; is tritonserver running?")
