"""The one tokenizer every service uses: tokenizer.json from the model repository, fixed truncation policy.

Truncation policy (a prompt longer than MAX_TOKENS=256 tokens, e.g. 3,000 tokens):
- ``Truncation.HEAD_TAIL`` (domain, jailbreak): keep the first 127 and the last 127 word pieces,
  so both the set-up and the actual ask at the end of a long prompt are seen.
- ``Truncation.HEAD`` (embeddings): keep the first 254 word pieces, as sentence-transformers does.
- ``Truncation.CHUNKS`` (PII, jailbreak windows): windows of 254 word pieces overlapping by 64, so every
  token of the prompt is tagged; ``Batch.text_index`` says which text each row came from.
Every row is ``[CLS] pieces [SEP]`` (``<s> pieces </s>`` in an MPNet vocabulary), right-padded with the
padding token (0 in BERT's vocabulary) to the smallest of LENGTH_BUCKETS that holds the longest row of the batch: the same text gives the same tensor in every service, and concurrent
requests of similar length have one shape, so Triton can batch them (it batches equal shapes only).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from enum import Enum
from functools import lru_cache
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from services.common.model_io import MAX_TOKENS, TRUNK

TOKENIZER_FILE = "tokenizer.json"
# Windows overlap by 64 tokens: an injection of up to 64 tokens is whole in some window (the guard scores
# these same rows for jailbreaks that the PII tagger tags, so one trunk pass serves both).
CHUNK_OVERLAP = 64
# Padded widths (tokens, special tokens included); a row goes to the smallest bucket that holds it. Few
# buckets: a short chat prompt (most are 15-30 tokens) shares one shape with its neighbours; padding
# 16 tokens to 32 costs less than the batches that a fifth shape would split.
LENGTH_BUCKETS: tuple[int, ...] = (32, 64, 128, MAX_TOKENS)
# Texts whose word pieces a tokenizer keeps (TextTokenizer._pieces): enough for the checks of a few dozen
# requests in flight, and no text so long that the memory would matter (64 texts x 32k chars at most).
RECENT_TEXTS = 64
RECENT_TEXT_MAX_CHARS = 32_768

# A text's word pieces without special tokens: ids, (start, end) character offsets, word ids (-1: none).
_Pieces = tuple[list[int], list[tuple[int, int]], list[int]]


def bucket_width(tokens: int) -> int:
    """The padded width of a row of `tokens` tokens (itself beyond the largest bucket)."""
    return next((b for b in LENGTH_BUCKETS if b >= tokens), tokens)


class TokenizerNotFoundError(FileNotFoundError):
    """tokenizer.json is missing from the model repository."""


class Truncation(str, Enum):
    HEAD = "head"
    HEAD_TAIL = "head_tail"
    CHUNKS = "chunks"


@dataclass(frozen=True)
class Batch:
    """Token ids ready for Triton, plus what is needed to map predictions back to the texts."""

    input_ids: np.ndarray  # [rows, T] int64
    attention_mask: np.ndarray  # [rows, T] int64
    # Character span (start, end) of every token in its text; (0, 0) for [CLS]/[SEP]/padding.
    offsets: np.ndarray  # [rows, T, 2] int64
    text_index: np.ndarray  # [rows] which input text a row belongs to
    # Pre-tokenizer word of every token (word pieces of one word share it); -1 for special tokens/padding.
    word_ids: np.ndarray  # [rows, T] int64

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


def tokenizer_path(model_repository: Path) -> Path:
    """Where the build writes tokenizer.json: next to the trunk (the encoder every ensemble runs)."""
    return Path(model_repository) / TRUNK / TOKENIZER_FILE


# (BERT spelling, RoBERTa spelling) of the row start, separator and padding tokens.
SPECIAL_TOKENS = (("[CLS]", "<s>"), ("[SEP]", "</s>"), ("[PAD]", "<pad>"))


def _special(tokenizer: Tokenizer, *names: str) -> int | None:
    """The id of the first of `names` that the file declares a special token (MPNet's vocabulary also holds
    [CLS]/[SEP]/[PAD] as ordinary words, ids 105/106/4), else of the first it knows at all."""
    declared = {t.content: i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special}
    found = [declared.get(name) for name in names] + [tokenizer.token_to_id(name) for name in names]
    return next((i for i in found if i is not None), None)


class TextTokenizer:
    """Turns texts into padded id batches under one of the truncation policies."""

    def __init__(self, tokenizer: Tokenizer, max_tokens: int = MAX_TOKENS) -> None:
        self._tokenizer = tokenizer
        # Special tokens are added here, not by the file's post-processor, so truncation can cut the middle.
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()
        # BERT's vocabularies (MiniLM) spell them [CLS]/[SEP]/[PAD]; RoBERTa-style ones (MPNet) <s>/</s>/<pad>.
        self._cls, self._sep, pad = (_special(tokenizer, *names) for names in SPECIAL_TOKENS)
        # Padding is masked out, so a vocabulary without a padding token pads with id 0.
        self._pad = 0 if pad is None else pad
        self.max_tokens = max_tokens
        # The word pieces of recent texts: a guard check encodes each prompt four times at once (jailbreak,
        # its windows, safety, PII), and word-piecing is most of what encode() costs.
        self._recent: OrderedDict[str, _Pieces] = OrderedDict()
        self._recent_lock = threading.Lock()

    @classmethod
    def from_file(cls, path: str | Path, max_tokens: int = MAX_TOKENS) -> TextTokenizer:
        path = Path(path)
        if not path.is_file():
            raise TokenizerNotFoundError(
                f"{path}: tokenizer file not found; build the model repository first (`switchyard models build`)"
            )
        return cls(Tokenizer.from_file(str(path)), max_tokens)

    @classmethod
    def from_repository(cls, model_repository: str | Path, max_tokens: int = MAX_TOKENS) -> TextTokenizer:
        return cls.from_file(tokenizer_path(Path(model_repository)), max_tokens)

    def encode(
        self, texts: list[str], truncation: Truncation = Truncation.HEAD_TAIL, window: int | None = None
    ) -> Batch:
        """Tokenize texts; CHUNKS may give several rows per text (rows of `window` tokens), the others one."""
        budget = (min(window, self.max_tokens) if window and truncation is Truncation.CHUNKS else self.max_tokens) - 2
        rows: list[tuple[list[int], list[tuple[int, int]], int, list[int]]] = []
        for index, (ids, offsets, words) in enumerate(self._pieces(list(texts))):
            for start, stop in _windows(len(ids), budget, truncation):
                rows.append((ids[start:stop], offsets[start:stop], index, words[start:stop]))
            if truncation is Truncation.HEAD_TAIL and len(ids) > budget:
                head = budget // 2 + budget % 2
                tail = budget - head
                rows[-1] = (ids[:head] + ids[-tail:], offsets[:head] + offsets[-tail:], index, words[:head] + words[-tail:])
        width = bucket_width(max((len(r[0]) for r in rows), default=0) + 2)
        n = len(rows)
        input_ids = np.full((n, width), self._pad, dtype=np.int64)
        mask = np.zeros((n, width), dtype=np.int64)
        spans = np.zeros((n, width, 2), dtype=np.int64)
        word_ids = np.full((n, width), -1, dtype=np.int64)
        for i, (ids, offs, _, words) in enumerate(rows):
            length = len(ids) + 2
            input_ids[i, :length] = [self._cls, *ids, self._sep]
            mask[i, :length] = 1
            if offs:
                spans[i, 1 : length - 1] = offs
                word_ids[i, 1 : length - 1] = words
        return Batch(input_ids, mask, spans, np.array([r[2] for r in rows], dtype=np.int64), word_ids)

    def _pieces(self, texts: list[str]) -> list[_Pieces]:
        """(ids, offsets, word ids) of each text without special tokens, recent texts from memory.

        The lists are shared with later calls: encode() only slices and copies them.
        """
        found: list[_Pieces | None] = [None] * len(texts)
        missing: list[int] = []
        with self._recent_lock:
            for i, text in enumerate(texts):
                pieces = self._recent.get(text)
                if pieces is None:
                    missing.append(i)
                else:
                    self._recent.move_to_end(text)
                    found[i] = pieces
        if missing:
            encodings = self._tokenizer.encode_batch([texts[i] for i in missing], add_special_tokens=False)
            with self._recent_lock:
                for i, encoding in zip(missing, encodings):
                    pieces = (encoding.ids, encoding.offsets, [-1 if w is None else w for w in encoding.word_ids])
                    found[i] = pieces
                    if len(texts[i]) <= RECENT_TEXT_MAX_CHARS:
                        self._recent[texts[i]] = pieces
                        if len(self._recent) > RECENT_TEXTS:
                            self._recent.popitem(last=False)
        return found  # type: ignore[return-value]

    def encode_pairs(self, pairs: list[tuple[str, str]]) -> Batch:
        """One row per pair, ``[CLS] a [SEP] b [SEP]``: the input of the cache's pair classifier.

        When the pair is too long, the longer side loses tokens from its end until both fit, so a short
        question is never cut for a long one. Offsets are not kept (the pair head reads whole rows).
        """
        budget = self.max_tokens - 3
        texts = [t for pair in pairs for t in pair]
        encodings = self._tokenizer.encode_batch(texts, add_special_tokens=False) if texts else []
        rows = []
        for i in range(len(pairs)):
            a, b = encodings[2 * i].ids, encodings[2 * i + 1].ids
            keep_a, keep_b = len(a), len(b)
            while keep_a + keep_b > budget:
                if keep_a >= keep_b:
                    keep_a -= 1
                else:
                    keep_b -= 1
            rows.append([self._cls, *a[:keep_a], self._sep, *b[:keep_b], self._sep])
        width = bucket_width(max((len(r) for r in rows), default=0))
        n = len(rows)
        input_ids = np.full((n, width), self._pad, dtype=np.int64)
        mask = np.zeros((n, width), dtype=np.int64)
        for i, row in enumerate(rows):
            input_ids[i, : len(row)] = row
            mask[i, : len(row)] = 1
        return Batch(input_ids, mask, np.zeros((n, width, 2), dtype=np.int64), np.arange(n, dtype=np.int64),
                     np.full((n, width), -1, dtype=np.int64))


def _windows(length: int, budget: int, truncation: Truncation) -> list[tuple[int, int]]:
    if truncation is not Truncation.CHUNKS or length <= budget:
        return [(0, min(length, budget))]
    overlap = min(CHUNK_OVERLAP, budget // 4)
    step = budget - overlap
    starts = list(range(0, length - overlap, step))
    return [(s, min(s + budget, length)) for s in starts]


@dataclass(frozen=True)
class EntitySpan:
    """A merged PII entity: character offsets into the text, its type and mean token probability."""

    start: int
    end: int
    label: str
    score: float


@lru_cache(maxsize=8)
def _bio_columns(labels: tuple[str, ...]) -> tuple[tuple[str, ...], np.ndarray, np.ndarray, int]:
    """(entity kinds in sorted order, their B- columns, their I- columns, the O column) of a label set."""
    kinds = tuple(sorted({label.partition("-")[2] for label in labels if label != "O"}))
    begin = np.array([labels.index(f"B-{kind}") for kind in kinds], dtype=np.intp)
    inside = np.array([labels.index(f"I-{kind}") for kind in kinds], dtype=np.intp)
    return kinds, begin, inside, labels.index("O")


def decode_bio(
    offsets: np.ndarray,
    probabilities: np.ndarray,
    mask: np.ndarray,
    labels: tuple[str, ...],
    word_ids: np.ndarray | None = None,
) -> list[EntitySpan]:
    """Merge per-token BIO predictions of one row into entity spans with character offsets.

    Decoding is per word (the word pieces of one pre-tokenizer word, e.g. "jose ##fs ##en"; without
    word_ids every token is its own word): the word takes the label with the most probability mass averaged over its pieces, so
    a word is never split between entities. An I- word that does not continue an entity of the same
    type starts one (lenient decoding).
    """
    kinds, begin, inside, outside = _bio_columns(tuple(labels))
    length = int(mask.sum())
    if length <= 2:
        return []
    # Array work for every word at once (the guard decodes every window of every prompt); the loop below
    # visits entity words only. A word's mean adds its pieces in order, then divides, as ndarray.mean does
    # (np.add.reduceat adds in another order: other float32 roundings, other spans at a tie).
    probs = np.asarray(probabilities[1 : length - 1])
    count = probs.shape[0]
    if word_ids is None:
        starts = np.arange(count)
    else:
        words = np.asarray(word_ids[1 : length - 1])
        glued = np.zeros(count, dtype=bool)
        glued[1:] = (words[1:] >= 0) & (words[1:] == words[:-1])
        starts = np.flatnonzero(~glued)
    stops = np.append(starts[1:], count)
    sizes = stops - starts
    sums = probs[starts]
    for piece in range(1, int(sizes.max())):
        longer = np.flatnonzero(sizes > piece)
        sums[longer] += probs[starts[longer] + piece]
    means = sums / sizes.astype(probs.dtype)[:, None]
    scores = means[:, begin] + means[:, inside]  # [words, kinds]
    best = scores.argmax(axis=1)
    picked = np.take_along_axis(scores, best[:, None], axis=1)[:, 0]
    entity_words = np.flatnonzero(picked > means[:, outside])
    firsts = probs[starts[entity_words]]
    first_begins = firsts[:, begin] >= firsts[:, inside]
    span_starts = np.asarray(offsets)[starts + 1, 0]
    span_ends = np.asarray(offsets)[stops, 1]

    spans: list[EntitySpan] = []
    current: list | None = None  # [start, end, kind, [scores]]
    previous = -2
    for position, word in enumerate(entity_words.tolist()):
        if word != previous + 1 and current is not None:
            # A word outside every entity came in between: it closed the open entity.
            spans.append(EntitySpan(current[0], current[1], current[2], float(np.mean(current[3]))))
            current = None
        previous = word
        k = int(best[word])
        score = float(picked[word])
        start, end = int(span_starts[word]), int(span_ends[word])
        # A word glued to the open entity ("Mrs" + ".", "04" + "/") continues it whatever its entity tag.
        if current is not None and start == current[1]:
            current[1] = end
            current[3].append(score)
            continue
        if current is not None and current[2] == kinds[k] and not first_begins[position, k]:
            current[1] = end
            current[3].append(score)
            continue
        if current is not None:
            spans.append(EntitySpan(current[0], current[1], current[2], float(np.mean(current[3]))))
        current = [start, end, kinds[k], [score]]
    if current is not None:
        spans.append(EntitySpan(current[0], current[1], current[2], float(np.mean(current[3]))))
    return spans


def merge_chunk_spans(spans: list[EntitySpan]) -> list[EntitySpan]:
    """Drop duplicates that overlapping chunks found twice, keeping the higher-scoring one."""
    kept: list[EntitySpan] = []
    for span in sorted(spans, key=lambda s: (s.start, -s.score)):
        if kept and span.start < kept[-1].end and span.label == kept[-1].label:
            if span.end > kept[-1].end:
                kept[-1] = EntitySpan(kept[-1].start, span.end, span.label, max(kept[-1].score, span.score))
            continue
        kept.append(span)
    return kept
