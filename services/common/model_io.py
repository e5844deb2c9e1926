"""Model names, tensor names, shapes and label sets shared by Triton configs, builders and clients."""

from __future__ import annotations

from dataclasses import dataclass

# Every text is cut to this many tokens (special tokens included); all-MiniLM-L6-v2 was trained at 256.
MAX_TOKENS = 256
HIDDEN_SIZE = 384
# Largest batch a model accepts; the client splits bigger requests.
MAX_BATCH_SIZE = 64

# Tensor names -------------------------------------------------------------------------------------
INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"
HIDDEN_STATES = "last_hidden_state"
PROBABILITIES = "probabilities"
EMBEDDING = "embedding"

# Model names --------------------------------------------------------------------------------------
ENCODER = "encoder"
POOL_NORMALIZE = "pool_normalize"
DOMAIN_HEAD = "domain_head"
JAILBREAK_HEAD = "jailbreak_head"
PII_HEAD = "pii_head"
SAFETY_HEAD = "safety_head"
PAIR_HEAD = "cache_pair_head"
# The ensembles are the contract services call.
DOMAIN_CLASSIFIER = "domain_classifier"
JAILBREAK_CLASSIFIER = "jailbreak_classifier"
PII_TAGGER = "pii_tagger"
EMBEDDER = "embedder"
# Heads that exist only on the shared trunk (they were added after it).
SAFETY_CLASSIFIER = "safety_classifier"
CACHE_PAIR_CLASSIFIER = "cache_pair_classifier"

# Label sets (order = output column order) ----------------------------------------------------------
DOMAIN_LABELS: tuple[str, ...] = (
    "biology",
    "business",
    "chemistry",
    "computer science",
    "economics",
    "engineering",
    "health",
    "history",
    "law",
    "math",
    "other",
    "philosophy",
    "physics",
    "psychology",
)
JAILBREAK_LABELS: tuple[str, ...] = ("benign", "jailbreak")
# Content-safety categories (../shared/data/safety.jsonl); "none" is a safe request.
SAFETY_NONE = "none"
SAFETY_LABELS: tuple[str, ...] = (
    SAFETY_NONE,
    "violence_weapons",
    "crime_fraud",
    "cyber_malware",
    "sexual",
    "child_safety",
    "self_harm",
    "hate_harassment",
    "drugs",
    "privacy_surveillance",
    "misinformation",
    "chem_bio",
    "other_harm",
)
# May the cached answer to one prompt be served for the other (cache_pairs.jsonl)?
PAIR_LABELS: tuple[str, ...] = ("different", "same")
PII_ENTITY_TYPES: tuple[str, ...] = (
    "PERSON",
    "LOCATION",
    "ORGANIZATION",
    "DATE_TIME",
    "NRP",
    "TITLE",
    "AGE",
)
PII_BIO_LABELS: tuple[str, ...] = ("O",) + tuple(f"{p}-{t}" for t in PII_ENTITY_TYPES for p in ("B", "I"))


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output as Triton sees it (dims exclude the batch dimension)."""

    name: str
    data_type: str  # Triton config spelling, e.g. "TYPE_INT64"
    dims: tuple[int, ...]

    @property
    def numpy_dtype(self) -> str:
        return {"TYPE_INT64": "int64", "TYPE_FP32": "float32"}[self.data_type]

    @property
    def wire_dtype(self) -> str:
        """The tritonclient spelling, e.g. "INT64"."""
        return self.data_type.removeprefix("TYPE_")


_IDS = TensorSpec(INPUT_IDS, "TYPE_INT64", (-1,))
_MASK = TensorSpec(ATTENTION_MASK, "TYPE_INT64", (-1,))
_HIDDEN = TensorSpec(HIDDEN_STATES, "TYPE_FP32", (-1, HIDDEN_SIZE))


@dataclass(frozen=True)
class ModelSpec:
    """A Triton model: its name, inputs and outputs."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def input(self, name: str) -> TensorSpec:
        return next(t for t in self.inputs if t.name == name)

    def output(self, name: str) -> TensorSpec:
        return next(t for t in self.outputs if t.name == name)


POOL_NORMALIZE_SPEC = ModelSpec(POOL_NORMALIZE, (_HIDDEN, _MASK), (TensorSpec(EMBEDDING, "TYPE_FP32", (HIDDEN_SIZE,)),))
DOMAIN_HEAD_SPEC = ModelSpec(
    DOMAIN_HEAD, (_HIDDEN, _MASK), (TensorSpec(PROBABILITIES, "TYPE_FP32", (len(DOMAIN_LABELS),)),)
)
JAILBREAK_HEAD_SPEC = ModelSpec(
    JAILBREAK_HEAD, (_HIDDEN, _MASK), (TensorSpec(PROBABILITIES, "TYPE_FP32", (len(JAILBREAK_LABELS),)),)
)
PII_HEAD_SPEC = ModelSpec(PII_HEAD, (_HIDDEN,), (TensorSpec(PROBABILITIES, "TYPE_FP32", (-1, len(PII_BIO_LABELS))),))
SAFETY_HEAD_SPEC = ModelSpec(
    SAFETY_HEAD, (_HIDDEN, _MASK), (TensorSpec(PROBABILITIES, "TYPE_FP32", (len(SAFETY_LABELS),)),)
)
PAIR_HEAD_SPEC = ModelSpec(PAIR_HEAD, (_HIDDEN, _MASK), (TensorSpec(PROBABILITIES, "TYPE_FP32", (len(PAIR_LABELS),)),))

# Ensembles take token ids and answer with the head's output.
DOMAIN_CLASSIFIER_SPEC = ModelSpec(DOMAIN_CLASSIFIER, (_IDS, _MASK), DOMAIN_HEAD_SPEC.outputs)
JAILBREAK_CLASSIFIER_SPEC = ModelSpec(JAILBREAK_CLASSIFIER, (_IDS, _MASK), JAILBREAK_HEAD_SPEC.outputs)
PII_TAGGER_SPEC = ModelSpec(PII_TAGGER, (_IDS, _MASK), PII_HEAD_SPEC.outputs)
EMBEDDER_SPEC = ModelSpec(EMBEDDER, (_IDS, _MASK), POOL_NORMALIZE_SPEC.outputs)
SAFETY_CLASSIFIER_SPEC = ModelSpec(SAFETY_CLASSIFIER, (_IDS, _MASK), SAFETY_HEAD_SPEC.outputs)
# Input: one row per pair, `[CLS] stored question [SEP] new question [SEP]` (TextTokenizer.encode_pairs).
CACHE_PAIR_CLASSIFIER_SPEC = ModelSpec(CACHE_PAIR_CLASSIFIER, (_IDS, _MASK), PAIR_HEAD_SPEC.outputs)

ENSEMBLE_SPECS: tuple[ModelSpec, ...] = (
    DOMAIN_CLASSIFIER_SPEC,
    JAILBREAK_CLASSIFIER_SPEC,
    PII_TAGGER_SPEC,
    EMBEDDER_SPEC,
    SAFETY_CLASSIFIER_SPEC,
    CACHE_PAIR_CLASSIFIER_SPEC,
)


# The shared multi-task trunk (services.models.trunk): the one model behind every ensemble. Its graph is
# the encoder with every head fused on top (services.models.heads.fuse_heads), so one execution answers
# every ensemble; each ensemble maps the trunk output that is its own.
TRUNK = "trunk"
TRUNK_OUTPUTS: dict[str, str] = {
    DOMAIN_CLASSIFIER: "domain_probabilities",
    JAILBREAK_CLASSIFIER: "jailbreak_probabilities",
    PII_TAGGER: "pii_probabilities",
    EMBEDDER: "embedding",
    SAFETY_CLASSIFIER: "safety_probabilities",
    CACHE_PAIR_CLASSIFIER: "cache_pair_probabilities",
}
# Which head (weights, ONNX graph) computes each ensemble's output on the trunk's token states.
ENSEMBLE_HEADS: dict[str, ModelSpec] = {
    DOMAIN_CLASSIFIER: DOMAIN_HEAD_SPEC,
    JAILBREAK_CLASSIFIER: JAILBREAK_HEAD_SPEC,
    PII_TAGGER: PII_HEAD_SPEC,
    EMBEDDER: POOL_NORMALIZE_SPEC,
    SAFETY_CLASSIFIER: SAFETY_HEAD_SPEC,
    CACHE_PAIR_CLASSIFIER: PAIR_HEAD_SPEC,
}
TRUNK_SPEC = ModelSpec(
    TRUNK,
    (_IDS, _MASK),
    tuple(TensorSpec(TRUNK_OUTPUTS[e.name], e.outputs[0].data_type, e.outputs[0].dims) for e in ENSEMBLE_SPECS),
)
# Several heads in one call: an ensemble that passes on every trunk output under the trunk's own names, of
# which a caller requests those it needs. The guard reads its jailbreak, safety and PII heads on the same rows
# this way (services.common.triton coalesces them): one request instead of three.
TRUNK_HEADS = "trunk_heads"
TRUNK_HEADS_SPEC = ModelSpec(TRUNK_HEADS, (_IDS, _MASK), TRUNK_SPEC.outputs)
# Every ensemble a service may call: the per-task contract and trunk_heads.
ENSEMBLE_NAMES: tuple[str, ...] = (*(s.name for s in ENSEMBLE_SPECS), TRUNK_HEADS)
