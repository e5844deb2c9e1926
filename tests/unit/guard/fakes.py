"""Stand-ins for the Triton client in guard unit tests: deterministic, no network."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from services.common.triton import TritonUnavailableError


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

    async def jailbreak_scores(self, texts: list[str]) -> list[float]:
        self.calls.append(list(texts))
        # Like the real client, a long text is seen only by its head and tail.
        seen = [text if len(text) <= 400 else text[:200] + text[-200:] for text in texts]
        return [0.97 if any(t in text.lower() for t in self.triggers) else 0.02 for text in seen]


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
    """Both model calls fail the way the real client does when Triton is not running."""

    async def jailbreak_scores(self, texts: list[str]) -> list[float]:
        raise TritonUnavailableError("jailbreak_classifier: cannot reach Triton at 127.0.0.1:1; is tritonserver running?")

    async def tag_pii(self, texts: list[str]) -> list[list[Span]]:
        raise TritonUnavailableError("pii_tagger: cannot reach Triton at 127.0.0.1:1; is tritonserver running?")
