"""Async Triton client (gRPC) with the small model API the services call: domain, jailbreak, PII, embeddings.

Texts are tokenized here (services.common.tokenizer, truncation policy documented there), split into
requests of at most MAX_BATCH_SIZE rows, sent concurrently, and reassembled in input order.
Transient UNAVAILABLE errors are retried with backoff; every call has TritonConfig.timeout_ms.
"""

from __future__ import annotations

import asyncio
import time
from contextvars import ContextVar
from pathlib import Path

import numpy as np
import tritonclient.grpc.aio as grpcclient
from tritonclient.utils import InferenceServerException

from services.common import model_io as io
from services.common.config import TritonConfig
from services.common.tokenizer import (Batch, EntitySpan, TextTokenizer, TokenizerNotFoundError, Truncation,
                                       bucket_width, decode_bio, merge_chunk_spans)


# Monotonic time at which the gRPC call being served gives up (set per call by the services). No Triton call
# is waited on past it, and the request carries it (DEADLINE_PARAMETER), so that Triton drops work whose
# caller has given up instead of computing it while everyone else waits.
CALL_DEADLINE: ContextVar[float | None] = ContextVar("switchyard_call_deadline", default=None)
# Triton 2.51's gRPC frontend (the local nvidia-pytriton server) can crash when an inference request is
# cancelled as it completes (triton-inference-server/server#7368, fixed in 24.12): a SIGSEGV that leaves the
# process hung, so every service behind it fails. A call is cancelled when its gRPC deadline passes or its
# caller is cancelled, both routine under load; so no call to Triton is cancelled from here. Its gRPC
# deadline is the caller's budget plus this grace (reached only when Triton itself hangs), and a caller that
# stops waiting at its budget leaves the request to end on its own.
ABANDONED_CALL_GRACE_S = 30.0
# Floor for a call's budget, so that a nearly spent deadline still gets a definite (fast) answer.
MIN_CALL_TIMEOUT_S = 0.01
# The request parameter carrying the caller's deadline (wall clock, ms since the epoch): the local backend
# drops a request whose caller has given up (services/models/triton_backend/model.py, same name).
DEADLINE_PARAMETER = "switchyard_deadline_ms"


# The served call (guard check) whose Triton calls on identical rows share one request: the first call for a
# row sends it to trunk_heads asking for every head the call declared, and the others for that row read
# their head from its answer instead of sending their own (the guard: jailbreak, safety and PII on the rows
# of a prompt). Unset (decision, cache), every call goes out on its own. Never shared between served calls:
# one client's cancelled request must not fail another's.
COALESCE_GROUP: ContextVar[_CallGroup | None] = ContextVar("switchyard_coalesce_group", default=None)


class _CallGroup:
    """One served call's shared requests: row tensors -> the request answering every declared head."""

    def __init__(self, ensembles: frozenset[str]) -> None:
        self.ensembles = ensembles
        self.requests: dict[tuple, asyncio.Future[dict[str, np.ndarray]]] = {}


def coalesce_calls(*ensembles: str) -> None:
    """From here on, this task's Triton calls to `ensembles` on identical rows share one trunk_heads request."""
    unknown = [name for name in ensembles if name not in io.TRUNK_OUTPUTS]
    if unknown:
        raise ValueError(f"coalesce_calls: {unknown} are not heads of the trunk (known: {sorted(io.TRUNK_OUTPUTS)})")
    COALESCE_GROUP.set(_CallGroup(frozenset(ensembles)))


def _retrieve(request: asyncio.Future) -> None:
    """Mark a shared request's failure seen: its callers may all have given up before it ended."""
    if not request.cancelled():
        request.exception()


def set_call_deadline(time_remaining_s: float | None) -> None:
    """Bound this task's Triton calls by the served call's remaining time (grpc context.time_remaining())."""
    CALL_DEADLINE.set(None if time_remaining_s is None else time.monotonic() + time_remaining_s)


class TritonError(RuntimeError):
    """A Triton call failed; subclasses say why."""


class TritonUnavailableError(TritonError):
    """Triton cannot be reached (not started, wrong host/port, or still starting)."""


class ModelNotAvailableError(TritonError):
    """Triton answers but the model is unknown or not ready (repository not built or not loaded)."""


class TritonTimeoutError(TritonError):
    """A call took longer than TritonConfig.timeout_ms."""


TRITON_CHANNEL_ARGS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", -1),
]


class TritonModels:
    """The switchyard models behind one Triton server. Create once per process; close() at shutdown."""

    def __init__(
        self,
        config: TritonConfig,
        tokenizer: TextTokenizer,
        retries: int = 2,
        retry_backoff_s: float = 0.05,
    ) -> None:
        self._config = config
        self._tokenizer = tokenizer
        self._retries = retries
        self._backoff = retry_backoff_s
        # Reconnect within a second after Triton stalled or restarted: gRPC's default backoff grows to
        # 120 s, and its 20 s connect timeout waits on a server that accepted TCP but was frozen.
        self._client = grpcclient.InferenceServerClient(url=config.grpc_url, channel_args=TRITON_CHANNEL_ARGS)

    @classmethod
    def from_config(cls, config: TritonConfig, model_repository: Path | None = None) -> TritonModels:
        """Tokenizer from <model_repository>/encoder/tokenizer.json, so every service tokenizes alike."""
        return cls(config, TextTokenizer.from_repository(model_repository or config.model_repository))

    async def close(self) -> None:
        await self._client.close()

    async def __aenter__(self) -> TritonModels:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # High-level API ------------------------------------------------------------------------------

    async def classify_domain(self, texts: list[str]) -> tuple[list[str], np.ndarray]:
        """Most likely MMLU-Pro category per text and the probabilities [n, 14] (columns: DOMAIN_LABELS)."""
        probs = await self.infer(io.DOMAIN_CLASSIFIER_SPEC, self._tokenizer.encode(texts, Truncation.HEAD_TAIL))
        return [io.DOMAIN_LABELS[i] for i in probs.argmax(axis=1)], probs

    async def jailbreak_scores(self, texts: list[str]) -> np.ndarray:
        """Probability [n] that each text is a jailbreak / prompt injection."""
        probs = await self.infer(io.JAILBREAK_CLASSIFIER_SPEC, self._tokenizer.encode(texts, Truncation.HEAD_TAIL))
        return probs[:, io.JAILBREAK_LABELS.index("jailbreak")]

    async def jailbreak_window_scores(self, texts: list[str]) -> list[np.ndarray]:
        """Per text, the jailbreak probability of each of its windows; empty for a text of one window.

        The windows are the PII tagger's rows (Truncation.CHUNKS, the same tensors tag_pii sends), so
        Triton batches the two requests and the trunk computes each window once for both heads.
        """
        batch = self._tokenizer.encode(texts, Truncation.CHUNKS)
        rows = long_text_rows(batch)
        probs = await self.infer(io.JAILBREAK_CLASSIFIER_SPEC, select_rows(batch, rows))
        scores = probs[:, io.JAILBREAK_LABELS.index("jailbreak")]
        owners = batch.text_index[rows]
        return [scores[owners == i] for i in range(len(texts))]

    async def safety_probabilities(self, texts: list[str]) -> np.ndarray:
        """Content-safety probabilities [n, 13] (columns: SAFETY_LABELS; column 0 is "none", a safe request)."""
        return await self.infer(io.SAFETY_CLASSIFIER_SPEC, self._tokenizer.encode(texts, Truncation.HEAD_TAIL))

    async def pair_same_scores(self, pairs: list[tuple[str, str]]) -> np.ndarray:
        """Probability [n] that the answer to each pair's first prompt also answers its second (cache verifier)."""
        probs = await self.infer(io.CACHE_PAIR_CLASSIFIER_SPEC, self._tokenizer.encode_pairs(pairs))
        return probs[:, io.PAIR_LABELS.index("same")]

    async def tag_pii(self, texts: list[str]) -> list[list[EntitySpan]]:
        """Entity spans (character offsets into each text) for the learned PII types; long texts are chunked."""
        batch = self._tokenizer.encode(texts, Truncation.CHUNKS)
        probs = await self.infer(io.PII_TAGGER_SPEC, batch)
        found: list[list[EntitySpan]] = [[] for _ in texts]
        for row in range(len(batch)):
            spans = decode_bio(
                batch.offsets[row], probs[row], batch.attention_mask[row], io.PII_BIO_LABELS, batch.word_ids[row]
            )
            found[int(batch.text_index[row])].extend(spans)
        return [merge_chunk_spans(spans) for spans in found]

    async def embed(self, texts: list[str]) -> np.ndarray:
        """L2-normalised sentence embeddings [n, 384] (all-MiniLM-L6-v2, first 254 word pieces)."""
        return await self.infer(io.EMBEDDER_SPEC, self._tokenizer.encode(texts, Truncation.HEAD))

    async def check_ready(self, models: tuple[str, ...] = io.ENSEMBLE_NAMES) -> None:
        """Raise TritonUnavailableError / ModelNotAvailableError unless the server and models are ready."""
        try:
            live = await self._client.is_server_ready(client_timeout=self._timeout_s)
        except InferenceServerException as exc:
            raise self._translate(exc, "server") from None
        if not live:
            raise TritonUnavailableError(f"Triton at {self._config.grpc_url} is up but not ready yet")
        for model in models:
            if not await self._client.is_model_ready(model, client_timeout=self._timeout_s):
                raise ModelNotAvailableError(
                    f"model {model!r} is not ready on Triton at {self._config.grpc_url}; "
                    "build the repository (`switchyard models build`) and check Triton's log"
                )

    # Low level -----------------------------------------------------------------------------------

    async def infer(self, spec: io.ModelSpec, batch: Batch) -> np.ndarray:
        """Run a batch through a model's first output, one request per length bucket (and MAX_BATCH_SIZE rows).

        Each row goes out at its own bucket's width, so that the same text is the same tensor whichever
        service sends it and whatever else is in its batch: Triton then batches the services' requests
        for one prompt (equal shapes) and the trunk computes their identical rows once.
        """
        if len(batch) == 0:
            shape = tuple(0 if d < 0 else d for d in spec.outputs[0].dims)
            return np.zeros((0, *shape), dtype=spec.outputs[0].numpy_dtype)
        widths = np.array([bucket_width(int(n)) for n in batch.attention_mask.sum(axis=1)])
        requests = []
        for width in sorted(set(widths.tolist())):
            rows = np.flatnonzero(widths == width)
            requests += [(rows[i : i + io.MAX_BATCH_SIZE], width) for i in range(0, len(rows), io.MAX_BATCH_SIZE)]
        parts = await asyncio.gather(
            *(self._infer_once(spec, batch.input_ids[rows, :width], batch.attention_mask[rows, :width])
              for rows, width in requests)
        )
        per_token = spec.outputs[0].dims[:1] == (-1,)
        full_width = batch.input_ids.shape[1]
        first = parts[0]
        shape = (len(batch), full_width, *first.shape[2:]) if per_token else (len(batch), *first.shape[1:])
        out = np.zeros(shape, dtype=first.dtype)
        for (rows, width), part in zip(requests, parts):
            if per_token:
                out[rows, :width] = part
            else:
                out[rows] = part
        return out

    @property
    def _timeout_s(self) -> float:
        budget = self._config.timeout_ms / 1000.0
        deadline = CALL_DEADLINE.get()
        if deadline is not None:
            budget = max(MIN_CALL_TIMEOUT_S, min(budget, deadline - time.monotonic()))
        return budget

    async def _infer_once(self, spec: io.ModelSpec, input_ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        group = COALESCE_GROUP.get()
        if group is None or spec.name not in group.ensembles or len(group.ensembles) < 2:
            return (await self._request(spec, input_ids, mask, [spec.outputs[0].name]))[spec.outputs[0].name]
        key = (input_ids.shape, input_ids.tobytes(), mask.tobytes())
        request = group.requests.get(key)
        if request is None:
            heads = [io.TRUNK_OUTPUTS[name] for name in sorted(group.ensembles)]
            # A task of its own: a caller that gives up must not cancel what the others wait on.
            request = group.requests[key] = asyncio.ensure_future(
                self._request(io.TRUNK_HEADS_SPEC, input_ids, mask, heads))
            request.add_done_callback(_retrieve)
        return (await asyncio.shield(request))[io.TRUNK_OUTPUTS[spec.name]]

    async def _request(self, spec: io.ModelSpec, input_ids: np.ndarray, mask: np.ndarray,
                       output_names: list[str]) -> dict[str, np.ndarray]:
        """One Triton request for the named outputs of `spec`, retried while Triton is unavailable."""
        inputs = []
        for tensor, value in ((spec.input(io.INPUT_IDS), input_ids), (spec.input(io.ATTENTION_MASK), mask)):
            item = grpcclient.InferInput(tensor.name, list(value.shape), tensor.wire_dtype)
            item.set_data_from_numpy(np.ascontiguousarray(value, dtype=tensor.numpy_dtype))
            inputs.append(item)
        outputs = [grpcclient.InferRequestedOutput(name) for name in output_names]
        attempt = 0
        while True:
            budget = self._timeout_s
            # Never cancelled from here (see ABANDONED_CALL_GRACE_S): the gRPC deadline is later than the
            # budget, and a caller that stops waiting (budget spent, or its own call cancelled) leaves the
            # request to end on its own; the backend answers an expired one at once.
            call = asyncio.ensure_future(self._client.infer(
                spec.name, inputs, outputs=outputs, client_timeout=budget + ABANDONED_CALL_GRACE_S,
                # Triton's queue policy drops the request after the budget, and the local backend (which has
                # no batcher, so no queue policy) reads the deadline parameter.
                timeout=int(budget * 1_000_000),
                parameters={DEADLINE_PARAMETER: round(time.time() * 1000 + budget * 1000, 1)},
            ))
            call.add_done_callback(_retrieve)
            try:
                result = await asyncio.wait_for(asyncio.shield(call), budget)
                return {name: result.as_numpy(name) for name in output_names}
            except TimeoutError:
                raise TritonTimeoutError(f"{spec.name}: no answer from Triton at {self._config.grpc_url} within "
                                         f"{budget * 1000:.0f} ms (the call's deadline)") from None
            except InferenceServerException as exc:
                error = self._translate(exc, spec.name)
                if isinstance(error, TritonUnavailableError) and attempt < self._retries:
                    attempt += 1
                    await asyncio.sleep(self._backoff * 2 ** (attempt - 1))
                    continue
                raise error from None

    def _translate(self, exc: InferenceServerException, model: str) -> TritonError:
        status = str(exc.status() or "")
        message = str(exc.message() or exc)
        where = f"Triton at {self._config.grpc_url}"
        # "Request timeout expired": Triton's queue policy dropped it (the caller's budget ran out).
        if "DEADLINE_EXCEEDED" in status or "Deadline" in message or "timeout expired" in message.lower():
            return TritonTimeoutError(f"{model}: no answer from {where} within {self._config.timeout_ms:.0f} ms")
        lowered = message.lower()
        if "unknown model" in lowered or "not found" in lowered or "is not ready" in lowered or "NOT_FOUND" in status:
            return ModelNotAvailableError(
                f"{model}: {where} says {message!r}; build the repository (`switchyard models build`) "
                "and check Triton's log for load errors"
            )
        if "UNAVAILABLE" in status:
            return TritonUnavailableError(
                f"{model}: cannot reach {where} ({message}); is tritonserver running (`switchyard up`)?"
            )
        return TritonError(f"{model}: {where} failed: {status} {message}")


def long_text_rows(batch: Batch) -> np.ndarray:
    """Indices of the rows of `batch` that belong to texts cut into more than one window."""
    windows_per_text = np.bincount(batch.text_index, minlength=1)
    return np.flatnonzero(windows_per_text[batch.text_index] > 1)


def select_rows(batch: Batch, rows: np.ndarray) -> Batch:
    """The given rows of `batch`, unchanged (same width: infer() sends each row at its own bucket's width)."""
    return Batch(batch.input_ids[rows], batch.attention_mask[rows], batch.offsets[rows], batch.text_index[rows],
                 batch.word_ids[rows])


class LazyTritonModels:
    """TritonModels built on first use: a service starts (and reports healthy) before Triton has
    loaded or the repository is built; until then its calls fail with a TritonError saying why."""

    def __init__(self, config: TritonConfig) -> None:
        self._config = config
        self._models: TritonModels | None = None

    def get(self) -> TritonModels:
        if self._models is None:
            try:
                self._models = TritonModels.from_config(self._config)
            except TokenizerNotFoundError as exc:
                raise ModelNotAvailableError(f"{exc}; run `make models`") from None
        return self._models

    async def close(self) -> None:
        if self._models is not None:
            await self._models.close()
