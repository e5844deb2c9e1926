"""Near-miss verification: may the answer stored for one question serve another that embeds close to it?

Similarity alone cannot tell "17 times 23" from "17 times 24": such pairs embed at 0.94 and above. This
module compares the two texts themselves. What decides the answer (numbers, names, negations, operators,
direction, word order) must agree, and a small edit may only be one that cannot change the question
(case, punctuation, a typo, a courtesy phrase, sentence order, a self-correction that restores the stored
question). What it does not recognise is rejected: a missed hit costs one backend call, a wrong hit serves
a wrong answer.

The verdict names the kind of agreement shown, so that the cache applies a similarity threshold per kind
and a hit can say which check passed. Pure functions of the two texts; no model, no I/O.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from difflib import SequenceMatcher
from enum import Enum
from functools import lru_cache


class Agreement(str, Enum):
    """How the two questions were shown to agree."""

    EXACT = "exact"  # the same text, up to Unicode form, whitespace and letter case
    LEXICAL = "lexical"  # the same words, up to punctuation, typos, courtesy phrases and sentence order
    CORRECTION = "correction"  # one question corrects itself into the other ("X, no I mean Y")
    PARAPHRASE = "paraphrase"  # other words, with the same numbers, names, negations, operators, direction


class Rejection(str, Enum):
    """Why a candidate was rejected; also a metrics label."""

    NUMBERS = "numbers"
    NEGATION = "negation"
    OPERATORS = "operators"
    ENTITIES = "entities"
    DIRECTION = "direction"  # "100 USD to EUR" / "100 EUR to USD"
    # A yes-no question and a wh-question ("is the sentence ..." / "which sentence ..."), or wh-words that
    # ask for another kind of answer ("who did the red sox play" / "when did boston win").
    QUESTION_FORM = "question-form"
    WORD_ORDER = "word-order"  # the same words in another order ("how ugly do beautiful people ...")
    SUBSTITUTION = "substitution"  # one short run of words swapped for another (antonym, entity, operation)
    EDITED = "edited"  # most words kept, several changed: how look-alike questions are made
    ADDED_CONTENT = "added-content"  # content only one of the two has: a condition added or removed
    SIMILARITY = "similarity"  # agreement shown, but the embeddings are below that agreement's threshold


# Agreements shown on the words themselves: no model is needed to serve them.
PROVEN = frozenset({Agreement.EXACT, Agreement.LEXICAL, Agreement.CORRECTION})
# Rejections on what decides the answer (a number, a name, a negation, an operator, a direction): final,
# also when a pair model would be asked, since these are the look-alikes a model misses most.
DECISIVE = frozenset({Rejection.NUMBERS, Rejection.NEGATION, Rejection.OPERATORS, Rejection.ENTITIES,
                      Rejection.DIRECTION})


@dataclass(frozen=True)
class Verdict:
    agreement: Agreement | None
    rejection: Rejection | None = None

    @property
    def passed(self) -> bool:
        return self.agreement is not None


# -- vocabulary --------------------------------------------------------------------------------------

def _phrases(text: str) -> list[str]:
    return [p.strip() for p in text.replace("\n", "|").split("|") if p.strip()]


_NUMBER_WORDS = {w: str(i) for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty".split())}
_NUMBER_WORDS.update({"thirty": "30", "forty": "40", "fifty": "50", "sixty": "60", "seventy": "70",
                      "eighty": "80", "ninety": "90", "hundred": "100", "thousand": "1000", "million": "1000000",
                      "billion": "1000000000", "dozen": "12"})
NEGATIONS = frozenset({"not", "no", "never", "none", "nothing", "nobody", "nowhere", "neither", "nor", "without"})
# Words with no say in what is asked: which of them a question uses does not change its answer. Quantifiers,
# comparisons, direction, sequence, possessives and modality (some, more, to, then, your, must, ...) are
# deliberately not here: "what is genius" / "what is your genius".
STOPWORDS = frozenset("""
a an the is are was were be been being am do does did doing done have has had having of in on at for with by
about as i you he she it we they me him us them this that these those what which who whom whose and can could
would will there here so just also very really please kindly
list show give find return display provide tell explain describe define
""".split())
DIRECTION_WORDS = frozenset({"to", "from", "into", "onto", "than", "vs", "versus", "per"})
_WH_KINDS = {"who": "person", "whom": "person", "whose": "person", "where": "place", "when": "time",
             "why": "reason"}
_PREPOSITIONS = frozenset("in on at for with by during after before since within under over about "
                          "regarding concerning".split())
_WH_WORDS = frozenset("what which who whom whose where when why how".split())
_AUXILIARIES = frozenset("is are was were am do does did can could will would should shall may might must has have "
                         "had".split())
# Capitalised inside a sentence, yet not names ("How can I ...", "... What is ...").
_NOT_NAMES = STOPWORDS | NEGATIONS | DIRECTION_WORDS | {"i'm", "i've", "i'd", "i'll", "ok", "okay"}
_CONJUNCTIONS = frozenset({",", "and", "or", "&"})
# Above this share of content words kept in order (difflib ratio), a question with other words is an edit of
# the other, not a rewording: how look-alikes are made ("how ugly do beautiful people think they are?").
# Tuned on the train split of cache_pairs.jsonl (bench/cache_quality.py).
EDIT_RATIO = 0.6
# Courtesy and framing that can open or close a question without changing it.
_WRAPPERS = _phrases("""
hi|hello|hey|hey there|hi there|good morning|good afternoon|good evening|greetings
quick question|hey quick one|quick one|question|i have a question|i was wondering|just wondering
could you help me with this|can you help me with this|please help|help me please
can you tell me this|can you tell me|could you tell me|please tell me|tell me
please|kindly|thanks|thank you|thanks in advance|thank you in advance|many thanks|thanks a lot|cheers
any help is appreciated|any help would be appreciated|i would appreciate it|i'd appreciate it
""")
_WRAPPER = "|".join(re.escape(p).replace(r"\ ", r"\s+") for p in sorted(_WRAPPERS, key=len, reverse=True))
_LEADING = re.compile(rf"^(?:\s*(?:{_WRAPPER})\b[\s,.:;!?-]*)+", re.I)
_TRAILING = re.compile(rf"(?:[\s,.:;!?-]*\b(?:{_WRAPPER}))+[\s.!?]*$", re.I)
# Words by which a speaker takes back what they just said ("X, no I mean Y"). A run of them marks a
# correction when it holds at least one strong marker; the correction counts only if it restores the other
# question word for word, so a marker word that is not one here ("no", "or") changes nothing.
_CORRECTION_STRONG_WORDS = ("no nope wait sorry mean meant rather instead actually scratch correction um umm uh uhh "
                            "er erm rephrase oops misspoke")
_CORRECTION_WEAK_WORDS = "i or not that but make let me ask and say to should be what the oh shoot wrong one tell want know"
# Pairs that one edit apart are different words, not a typo.
_OPPOSITES = frozenset(frozenset(p.split("/")) for p in """
increase/decrease increases/decreases increased/decreased increasing/decreasing include/exclude
includes/excludes including/excluding import/export imports/exports inside/outside internal/external
maximum/minimum before/after above/below input/output inflow/outflow ascending/descending least/most
""".split())

_QUOTES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"', "\u00d7": "*", "\u00f7": "/",
                         "\u2212": "-", "\u2013": "-", "\u2014": " - "})
_CONTRACTIONS = [
    (re.compile(r"\bcan't\b|\bcannot\b", re.I), "can not"),
    (re.compile(r"\bwon't\b", re.I), "will not"),
    (re.compile(r"n't\b", re.I), " not"),
    (re.compile(r"'re\b", re.I), " are"),
    (re.compile(r"'m\b", re.I), " am"),
    (re.compile(r"'ve\b", re.I), " have"),
    (re.compile(r"'ll\b", re.I), " will"),
    (re.compile(r"'d\b", re.I), " would"),
    (re.compile(r"\b(what|that|it|there|here|who|where|how|when|why|he|she|this)'s\b", re.I), r"\1 is"),
    (re.compile(r"'s\b|(?<=s)'(?=\s|$)", re.I), ""),  # possessive
]
# A number (thousands separators, decimals, fractions), a word, an operator symbol, a comma, a sentence end.
_TOKEN = re.compile(r"(?P<num>\d+(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?(?:/\d+)?)"
                    r"|(?P<acronym>[A-Z](?:\.[A-Z])+\.?)"
                    r"|(?P<word>[^\W\d_]+(?:['\-][^\W\d_]+)*)"
                    r"|(?P<op>[+*/=<>^%≤≥→-])"
                    r"|(?P<sep>,)"
                    r"|(?P<end>[.?!;:]+(?=\s|$)|\n)")


@dataclass(frozen=True)
class _Token:
    text: str  # lower-cased and stemmed; numbers normalised ("10,000.0" -> "10000", "two" -> "2")
    kind: str  # num | word | op | sep
    entity: bool  # a name: capitalised inside a sentence, an acronym, or mixed case ("iPhone")
    sentence: int
    spelling: str = ""  # the word as written, lower-cased (typos are told by it, not by the stem)


def _strip_wrappers(text: str) -> str:
    stripped = _TRAILING.sub("", _LEADING.sub("", text))
    return stripped if stripped.strip() else text


@lru_cache(maxsize=4096)
def _tokens(text: str) -> tuple[_Token, ...]:
    text = _strip_wrappers(unicodedata.normalize("NFKC", text).translate(_QUOTES))
    for pattern, replacement in _CONTRACTIONS:
        text = pattern.sub(replacement, text)
    out: list[_Token] = []
    sentence, first = 0, True
    for match in _TOKEN.finditer(text):
        kind, value = match.lastgroup or "", match.group()
        if kind == "end":
            sentence, first = sentence + 1, True
            continue
        if kind == "num":
            out.append(_Token(_number(value), "num", False, sentence))
        elif kind == "op":
            out.append(_Token("percent", "word", False, sentence) if value == "%" else
                       _Token(value, "op", False, sentence))
        elif kind == "sep":
            out.append(_Token(",", "sep", False, sentence))
            continue
        elif kind == "acronym":  # "U.S." reads as "US"
            letters = value.replace(".", "")
            out.append(_Token(letters.lower(), "word", True, sentence, letters.lower()))
        else:
            lower = value.lower()
            if lower in _NUMBER_WORDS:
                out.append(_Token(_NUMBER_WORDS[lower], "num", False, sentence))
            else:
                entity = _is_name(value, lower, first)
                out.append(_Token(_stem(lower), "word", entity, sentence, lower))
        first = False
    return tuple(out)


def _is_name(value: str, lower: str, first: bool) -> bool:
    """Capitalised inside a sentence, an acronym, or mixed case ("iPhone"); a lone capital letter inside a
    sentence is a name too ("vitamin A"), except the pronoun I."""
    if len(value) == 1:
        return value.isupper() and value != "I" and not first
    if lower in _NOT_NAMES:
        return False
    return (value[0].isupper() and not first) or value.isupper() or any(c.isupper() for c in value[1:])


def _number(value: str) -> str:
    value = value.replace(",", "")
    if "/" in value:
        return value
    if "." in value:
        value = value.rstrip("0").rstrip(".")
    return value.lstrip("0") or "0"


def _stem(word: str) -> str:
    """Plural and tense endings off: "ages" and "age", "printed" and "print" ask the same here."""
    if word in STOPWORDS or word in NEGATIONS or word in DIRECTION_WORDS or word in _CONJUNCTIONS:
        return word
    for suffix, repl in (("ies", "y"), ("sses", "ss"), ("es", "e"), ("s", ""), ("ing", ""), ("ed", "")):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3 and not word.endswith("ss"):
            stem = word[: len(word) - len(suffix)] + repl
            # "listed" is not the framing verb "list" ("list the ...").
            return word if stem in STOPWORDS else stem
    return word


# The markers as _Text.words() spells them (stemmed: "oops" is "oop" there, and was never found before).
_CORRECTION_STRONG = frozenset(_stem(w) for w in _CORRECTION_STRONG_WORDS.split())
_CORRECTION_WEAK = frozenset(_stem(w) for w in _CORRECTION_WEAK_WORDS.split())


def _typo(a: str, b: str) -> bool:
    """One letter dropped, doubled or swapped with its neighbour; one replaced only in long words."""
    if min(len(a), len(b)) < 4 or abs(len(a) - len(b)) > 1 or frozenset((a, b)) in _OPPOSITES:
        return False
    if len(a) == len(b):
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        if len(diff) == 2:
            i, j = diff
            return j == i + 1 and a[i] == b[j] and a[j] == b[i]
        return len(diff) == 1 and len(a) >= 6
    short, long_ = (a, b) if len(a) < len(b) else (b, a)
    return any(long_[:i] + long_[i + 1:] == short for i in range(len(long_)))


# -- one text, as the checks see it --------------------------------------------------------------------

@dataclass(frozen=True)
class _Text:
    tokens: tuple[_Token, ...]

    def words(self) -> list[str]:
        return [t.text for t in self.tokens if t.kind != "sep"]

    def numbers(self) -> Counter[str]:
        return Counter(t.text for t in self.tokens if t.kind == "num")

    def operators(self) -> Counter[str]:
        return Counter(t.text for t in self.tokens if t.kind == "op")

    def negations(self) -> int:
        return sum(t.text in NEGATIONS for t in self.tokens)

    def entities(self) -> set[str]:
        return {t.text for t in self.tokens if t.entity}

    def vocabulary(self) -> set[str]:
        return {t.text for t in self.tokens if t.kind != "sep"}

    def content(self) -> Counter[str]:
        # "to" comes and goes with rewording ("how to cook" / "how do I cook"); "from", "per", "than" do not.
        return Counter(t.text for t in self.tokens if t.kind == "word" and t.text not in STOPWORDS
                       and t.text not in NEGATIONS and t.text != "to")

    def asks(self) -> set[str]:
        """What kind of answer the question wants, where its words say it: a person, place, time or reason
        (a sentence opening with who/where/when/why, not the relative "the person who ..."), or a quantity."""
        kinds: set[str] = set()
        words = [t for t in self.tokens if t.kind != "sep"]
        for i, t in enumerate(words):
            opens = i == 0 or words[i - 1].sentence != t.sentence
            after = words[i + 1].text if i + 1 < len(words) else ""
            if opens and t.text in _WH_KINDS:
                kinds.add(_WH_KINDS[t.text])
            # A count or an amount ("how many ...", "the number of ...") is not a name or a list.
            if (opens and t.text == "how" and after in {"many", "much"}) or (opens and t.text == "count") \
                    or (t.text == "number" and after == "of") or t.text in {"total", "amount", "sum"}:
                kinds.add("quantity")
        return kinds

    def form(self) -> str:
        """"wh" (what, how, ...), "yes-no" (is it ..., does ...) or "other" (requests: "can you ...", "list ...")."""
        words = [t.text for t in self.tokens if t.kind == "word"]
        if not words:
            return "other"
        if words[0] in _WH_WORDS:
            return "wh"
        if words[0] in _AUXILIARIES and (len(words) < 2 or words[1] not in {"you", "u", "i", "we"}):
            return "yes-no"
        return "other"

    def sentences(self, shared: set[str]) -> list[tuple[str, ...]]:
        """Per sentence, the words both texts use, in order (stop words out, conjunctions kept)."""
        by_sentence: dict[int, list[str]] = {}
        for t in self.tokens:
            if (t.text in shared and t.text not in STOPWORDS) or t.text in _CONJUNCTIONS:
                by_sentence.setdefault(t.sentence, []).append(t.text)
        return [tuple(words) for words in by_sentence.values() if set(words) - _CONJUNCTIONS]

    def renamed(self, names: dict[str, str]) -> _Text:
        return _Text(tuple(_Token(names.get(t.text, t.text), t.kind, t.entity, t.sentence, t.spelling)
                           for t in self.tokens))


def _typo_names(a: _Text, b: _Text) -> dict[str, str]:
    """a's misspelt words (stems) -> the stem of b's spelling. Never for names: "Iran" and "Iraq" are one
    letter apart."""
    vocab_b = b.vocabulary()
    spelt_b = {t.spelling: t.text for t in b.tokens if t.kind == "word" and not t.entity}
    names: dict[str, str] = {}
    for t in a.tokens:
        if t.kind != "word" or t.entity or t.text in vocab_b or t.text in names:
            continue
        partner = next((spelt_b[w] for w in sorted(spelt_b) if _typo(t.spelling, w)), None)
        if partner is not None:
            names[t.text] = partner
    return names


# -- checks ----------------------------------------------------------------------------------------------

def _directions(text: _Text, anchors: set[str]) -> dict[str, set[str]]:
    """Anchor -> the direction words that lead to it ("to" for EUR in "100 USD to EUR")."""
    led: dict[str, set[str]] = {}
    tokens = text.tokens
    for i, t in enumerate(tokens):
        if t.text not in anchors:
            continue
        for p in reversed(tokens[max(0, i - 3):i]):
            if p.text in DIRECTION_WORDS:
                led.setdefault(t.text, set()).add(p.text)
                break
            if not (p.text in STOPWORDS or p.kind == "num"):
                break
    return led


def _direction_agrees(a: _Text, b: _Text, anchors: set[str]) -> bool:
    """No shared anchor is led by different direction words, and a direction word both texts use leads to the
    same anchors in both: "from X to Y" / "from Y to X" and "100 USD to EUR" / "100 EUR to USD" disagree."""
    led_a, led_b = _directions(a, anchors), _directions(b, anchors)
    for anchor in led_a.keys() & led_b.keys():
        if led_a[anchor] != led_b[anchor]:
            return False
    for word in DIRECTION_WORDS:
        to_a = {x for x, words in led_a.items() if word in words}
        to_b = {x for x, words in led_b.items() if word in words}
        if to_a and to_b and to_a != to_b:
            return False
    return True


def _split(words: tuple[str, ...]) -> tuple[list[tuple[str, ...]], list[str]]:
    parts: list[tuple[str, ...]] = []
    separators: list[str] = []
    current: list[str] = []
    for w in words:
        if w in _CONJUNCTIONS:
            parts.append(tuple(current))
            separators.append(w)
            current = []
        else:
            current.append(w)
    parts.append(tuple(current))
    return parts, separators


def _conjuncts_swapped(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    """b is a with the members of one coordination reordered ("X and Y" / "Y and X", "A, B and C")."""
    if Counter(a) != Counter(b):
        return False
    prefix = 0
    while prefix < len(a) and a[prefix] == b[prefix]:
        prefix += 1
    suffix = 0
    while suffix < len(a) - prefix and a[-1 - suffix] == b[-1 - suffix]:
        suffix += 1
    # The members' edges may coincide by chance ("the new X and the old X"): widen the span a little.
    for left in range(min(prefix, 3) + 1):
        for right in range(min(suffix, 3) + 1):
            parts_a, seps_a = _split(a[prefix - left:len(a) - suffix + right])
            parts_b, seps_b = _split(b[prefix - left:len(b) - suffix + right])
            if len(parts_a) > 1 and seps_a == seps_b and Counter(parts_a) == Counter(parts_b) \
                    and all(parts_a):
                return True
    return False


def _order_agrees(a: _Text, b: _Text, shared: set[str]) -> bool:
    """The words both texts use come in the same order, or one moved a leading or trailing phrase to the
    other end ("In Python, how do I reverse a list?" / "How do I reverse a list in Python?")."""
    return _same_order(a.sentences(shared), b.sentences(shared)) or _phrase_moved(a, b) or _phrase_moved(b, a)


def _phrase_moved(a: _Text, b: _Text, longest: int = 6) -> bool:
    """a = P + R and b = R + P, where P is a phrase that opens with a preposition."""
    x = [t.text for t in a.tokens if t.kind != "sep"]
    y = [t.text for t in b.tokens if t.kind != "sep"]
    if len(x) != len(y):
        return False
    for n in range(1, min(longest, len(x) - 1) + 1):
        if x[0] in _PREPOSITIONS and x[n:] + x[:n] == y:
            return True
    return False


def _same_order(sentences_a: list[tuple[str, ...]], sentences_b: list[tuple[str, ...]]) -> bool:
    """The same words in the same order: in the whole text, or sentence by sentence in any sentence order,
    or with the members of a coordination reordered ("X and Y" / "Y and X")."""
    def bare(sentence: tuple[str, ...]) -> tuple[str, ...]:
        # Commas come and go with punctuation edits; they only matter to tell list members apart.
        return tuple(w for w in sentence if w != ",")

    if [w for s in sentences_a for w in bare(s)] == [w for s in sentences_b for w in bare(s)]:
        return True
    bare_a, bare_b = Counter(map(bare, sentences_a)), Counter(map(bare, sentences_b))
    if bare_a == bare_b:
        return True
    only_a = [s for s in sentences_a if bare(s) not in bare_b]
    only_b = [s for s in sentences_b if bare(s) not in bare_a]
    if len(only_a) != len(only_b):
        return False
    remaining = list(only_b)
    for sentence in only_a:
        partner = next((s for s in remaining if _conjuncts_swapped(sentence, s)), None)
        if partner is None:
            return False
        remaining.remove(partner)
    return True


def _correction_restores(a: _Text, b: _Text) -> bool:
    """a corrects itself into exactly b: <start of b> <retracted words> <correction> <rest of b, restarted>,
    or <start of b> <retracted words> <end of b> <correction> <the words that replace the retracted ones>."""
    x, y = a.words(), b.words()
    if len(x) > 200 or not _CORRECTION_STRONG & set(x):
        return False
    markers = _CORRECTION_STRONG | _CORRECTION_WEAK
    for m, word in enumerate(x):
        if word not in _CORRECTION_STRONG:
            continue
        run_start = m
        while run_start > 0 and x[run_start - 1] in markers:
            run_start -= 1
        run_end = m + 1
        while run_end < len(x) and x[run_end] in markers:
            run_end += 1
        # The run's weak words may belong to the retracted words or to the repair ("... no, what is ...").
        for cut in range(m + 1, run_end + 1):
            repair = x[cut:]
            if not repair:
                continue
            for head in {tuple(x[:m]), tuple(x[:run_start])}:
                if _restarts(list(head), repair, y) or _replaces(list(head), repair, y):
                    return True
    return False


def _restarts(head: list[str], repair: list[str], target: list[str]) -> bool:
    """target = head's beginning + repair, the repair restarting at or before where head went astray. Something
    must have been retracted: "if no repetitions are allowed" does not correct "if repetitions are allowed"."""
    if len(repair) > len(target) or target[len(target) - len(repair):] != repair:
        return False
    restart = len(target) - len(repair)
    return len(head) > restart and head[:restart] == target[:restart]


def _replaces(head: list[str], repair: list[str], target: list[str]) -> bool:
    """target = P + repair + S where head = P + <retracted, 1-6 words> + S."""
    for p in range(len(target) - len(repair) + 1):
        if target[p:p + len(repair)] != repair or head[:p] != target[:p]:
            continue
        rest = target[p + len(repair):]
        retracted = len(head) - p - len(rest)
        if 1 <= retracted <= 6 and head[len(head) - len(rest):] == rest:
            return True
    return False


def _content_words(text: _Text) -> list[str]:
    return [t.text for t in text.tokens if t.kind == "word" and t.text not in STOPWORDS]


def _one_span_replaced(a: list[str], b: list[str], longest: int = 3) -> bool:
    """Everything the same but one short run of words ("kansas city" -> "south carolina city")."""
    prefix = 0
    while prefix < min(len(a), len(b)) and a[prefix] == b[prefix]:
        prefix += 1
    suffix = 0
    while suffix < min(len(a), len(b)) - prefix and a[-1 - suffix] == b[-1 - suffix]:
        suffix += 1
    middle_a, middle_b = len(a) - prefix - suffix, len(b) - prefix - suffix
    return 0 < middle_a <= longest and 0 < middle_b <= longest


def _kept_share(a: list[str], b: list[str]) -> float:
    """The share of words kept in order (difflib's ratio); for long texts, where that is quadratic, the share
    kept in any order, which is never lower (so a long near-copy is never taken for a rewording)."""
    if max(len(a), len(b)) > 300:
        return SequenceMatcher(a=a, b=b, autojunk=False).quick_ratio()
    return SequenceMatcher(a=a, b=b, autojunk=False).ratio()


def _anchors_in_order(a: _Text, b: _Text, anchors: set[str]) -> bool:
    """The shared numbers and names come in the same order (sentences may move, list members may swap)."""
    def sequence(text: _Text) -> list[tuple[str, ...]]:
        by_sentence: dict[int, list[str]] = {}
        for t in text.tokens:
            if t.text in anchors or t.text in _CONJUNCTIONS:
                by_sentence.setdefault(t.sentence, []).append(t.text)
        return [tuple(w) for w in by_sentence.values() if set(w) - _CONJUNCTIONS]
    return _same_order(sequence(a), sequence(b))


def verify(new: str, stored: str) -> Verdict:
    """Whether the answer stored for `stored` answers `new`, judged on the texts alone."""
    if " ".join(new.split()).casefold() == " ".join(stored.split()).casefold():
        return Verdict(Agreement.EXACT)
    a, b = _Text(_tokens(new)), _Text(_tokens(stored))
    a = a.renamed(_typo_names(a, b))
    b = b.renamed(_typo_names(b, a))
    if _correction_restores(a, b) or _correction_restores(b, a):
        return Verdict(Agreement.CORRECTION)
    if a.numbers() != b.numbers():
        return Verdict(None, Rejection.NUMBERS)
    if a.negations() != b.negations():
        return Verdict(None, Rejection.NEGATION)
    if a.operators() != b.operators():
        return Verdict(None, Rejection.OPERATORS)
    vocab_a, vocab_b = a.vocabulary(), b.vocabulary()
    if not a.entities() <= vocab_b or not b.entities() <= vocab_a:
        return Verdict(None, Rejection.ENTITIES)
    shared = vocab_a & vocab_b
    anchors = (a.entities() | b.entities() | set(a.numbers())) & shared
    if not _direction_agrees(a, b, anchors):
        return Verdict(None, Rejection.DIRECTION)
    forms = {a.form(), b.form()}
    if forms == {"wh", "yes-no"} or a.asks() != b.asks():
        return Verdict(None, Rejection.QUESTION_FORM)
    content_a, content_b = a.content(), b.content()
    only_a, only_b = content_a - content_b, content_b - content_a
    if not only_a and not only_b:
        return Verdict(Agreement.LEXICAL) if _order_agrees(a, b, shared) else Verdict(None, Rejection.WORD_ORDER)
    if not only_a or not only_b:
        return Verdict(None, Rejection.ADDED_CONTENT)
    words_a, words_b = _content_words(a), _content_words(b)
    if sum(only_a.values()) + sum(only_b.values()) <= 2 or _one_span_replaced(words_a, words_b):
        return Verdict(None, Rejection.SUBSTITUTION)
    if _kept_share(words_a, words_b) >= EDIT_RATIO:
        return Verdict(None, Rejection.EDITED)
    if not _anchors_in_order(a, b, (a.entities() | b.entities()) & shared):
        return Verdict(None, Rejection.WORD_ORDER)
    return Verdict(Agreement.PARAPHRASE)
