"""Python-based Triton backend named `onnxruntime`: runs a model's ONNX file with the onnxruntime package.

The local tritonserver (nvidia-pytriton wheel) has only the Python backend; this file, installed as
`<backend-directory>/onnxruntime/model.py`, stands in for the native onnxruntime backend so the same
model repository (every config says backend: "onnxruntime") loads here and in the NGC image.
It honours the native backend's `intra_op_thread_count` / `inter_op_thread_count` parameters.

Token-id rows run one at a time: the int8 trunk quantizes activations dynamically, over the whole input
tensor, so a row batched with others would get slightly different outputs (up to 0.03 in a probability)
than the same row alone, and a verdict would depend on what else was in flight. One row at a time, a text
gets the same outputs whoever asks and whatever else is queued; on two CPU cores it costs little (8 rows
of 32 tokens: 1.5x a batch of 8; from 128 tokens on, no more or less).

A model whose config sets the parameter `row_cache_rows` (the shared trunk) keeps the outputs of its most
recent rows: the decision, guard and cache services each ask for the same text within a few
milliseconds, so only the first request computes it and the others are answered from the cache, without
waiting in a batching window for each other. It counts both in the metric `switchyard_trunk_rows_total`.
"""

import json
import os
import time
from collections import OrderedDict

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

# Small CPUs: one or two threads per model and no spin-waiting, so idle models leave cores to others.
DEFAULT_INTRA_OP_THREADS = min(2, os.cpu_count() or 1)
# The caller's deadline (wall clock, ms since the epoch), a request parameter the services set
# (services.common.triton). The local trunk runs without Triton's dynamic batcher and so without its queue
# policy: this is how a request whose caller has given up is dropped instead of computed. Without it, a
# backlog left by a stall (Triton frozen for 4 s under load) was computed while new requests waited behind
# it, missed their deadlines, and became backlog in turn: the mesh never recovered.
DEADLINE_PARAMETER = "switchyard_deadline_ms"


def _expired(parameters, now_ms):
    """True when the request's deadline parameter (if any) has passed."""
    try:
        deadline = json.loads(parameters or "{}").get(DEADLINE_PARAMETER)
    except (ValueError, AttributeError):
        return False
    return isinstance(deadline, (int, float)) and now_ms > deadline


def _row_keys(feeds):
    """One bytes key per row: the row's values of every input (equal keys = equal rows)."""
    values = list(feeds.values())
    return [b"".join(v[row].tobytes() for v in values) for row in range(values[0].shape[0])]


def _unique_rows(keys):
    """(indices of the first occurrence of each distinct key, row -> position among those)."""
    first, inverse, seen = [], np.empty(len(keys), dtype=np.int64), {}
    for row, key in enumerate(keys):
        position = seen.get(key)
        if position is None:
            position = seen[key] = len(first)
            first.append(row)
        inverse[row] = position
    return np.array(first, dtype=np.int64), inverse


class RowCache:
    """Output rows by input row (least recently used first out); one model instance, one thread."""

    def __init__(self, capacity):
        self.capacity = capacity
        self._rows = OrderedDict()

    def get(self, key):
        found = self._rows.get(key)
        if found is not None:
            self._rows.move_to_end(key)
        return found

    def put(self, key, outputs):
        self._rows[key] = outputs
        self._rows.move_to_end(key)
        while len(self._rows) > self.capacity:
            self._rows.popitem(last=False)


class RowCounter:
    """switchyard_trunk_rows_total{model, outcome=computed|reused} on Triton's metrics port, if it has them."""

    def __init__(self, model):
        self._metrics = {}
        self._family = None  # kept: Triton refuses updates to metrics whose family object was deleted
        try:
            self._family = family = pb_utils.MetricFamily(
                name="switchyard_trunk_rows_total",
                description="Rows of token ids the model answered, by outcome: computed, or reused from "
                "its recent-rows cache (another service asked for the same row moments before)",
                kind=pb_utils.MetricFamily.COUNTER,
            )
            for outcome in ("computed", "reused"):
                self._metrics[outcome] = family.Metric(labels={"model": model, "outcome": outcome})
        except Exception:  # noqa: BLE001 - an older stub without custom metrics still serves
            self._metrics = {}

    def add(self, outcome, count):
        metric = self._metrics.get(outcome)
        if metric is not None and count:
            try:
                metric.increment(count)
            except Exception:  # noqa: BLE001 - a metric must never fail an inference
                self._metrics = {}


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        filename = config.get("default_model_filename") or "model.onnx"
        path = os.path.join(args["model_repository"], args["model_version"], filename)
        if not os.path.isfile(path):
            raise pb_utils.TritonModelException(
                f"{path} not found: build the model repository (`switchyard models build`)"
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(params.get("intra_op_thread_count") or DEFAULT_INTRA_OP_THREADS)
        options.inter_op_num_threads = int(params.get("inter_op_thread_count") or 1)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.inputs = [i["name"] for i in config["input"]]
        self.outputs = [o["name"] for o in config["output"]]
        rows = int(params.get("row_cache_rows") or 0)
        self.cache = RowCache(rows) if rows > 0 else None
        self.counter = RowCounter(config["name"]) if self.cache is not None else None

    def execute(self, requests):
        responses = [None] * len(requests)
        now_ms = time.time() * 1000
        live = []
        for index, request in enumerate(requests):
            if _expired(request.parameters(), now_ms):
                responses[index] = pb_utils.InferenceResponse(error=pb_utils.TritonError(
                    "Request timeout expired: the caller's deadline passed while the request was queued"))
            else:
                live.append(index)
        # Requests whose inputs have the same shapes (beyond the batch) run as one batch.
        arrays = {i: [pb_utils.get_input_tensor_by_name(requests[i], n).as_numpy() for n in self.inputs] for i in live}
        groups = {}
        for index, feeds in arrays.items():
            groups.setdefault(tuple(a.shape[1:] for a in feeds), []).append(index)
        for members in groups.values():
            feeds = {n: np.concatenate([arrays[m][k] for m in members]) for k, n in enumerate(self.inputs)}
            try:
                results = self._run_cached(feeds) if self.cache is not None else self._run(feeds)
            except Exception as exc:  # noqa: BLE001 - every failure must reach the client as an error
                for m in members:
                    responses[m] = pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc)))
                continue
            start = 0
            for m in members:
                size = arrays[m][0].shape[0]
                wanted = set(requests[m].requested_output_names() or self.outputs)
                tensors = [
                    pb_utils.Tensor(name, np.ascontiguousarray(results[name][start : start + size]))
                    for name in self.outputs
                    if name in wanted
                ]
                responses[m] = pb_utils.InferenceResponse(output_tensors=tensors)
                start += size
        return responses

    def _run(self, feeds):
        """Every output for the batch; identical token-id rows are computed once, each row on its own."""
        rows = len(feeds[self.inputs[0]])
        # Token-id inputs only (the encoders): hashing float hidden states would cost more than it saves.
        if rows > 1 and all(np.issubdtype(v.dtype, np.integer) for v in feeds.values()):
            unique, inverse = _unique_rows(_row_keys(feeds))
            results = self._rowwise({n: v[unique] for n, v in feeds.items()})
            return {name: value[inverse] for name, value in zip(self.outputs, results)}
        return dict(zip(self.outputs, self.session.run(self.outputs, feeds)))

    def _rowwise(self, feeds):
        """session.run one row at a time (batch-independent outputs, see the module's note), stacked."""
        rows = len(feeds[self.inputs[0]])
        if rows == 1:
            return self.session.run(self.outputs, feeds)
        parts = [self.session.run(self.outputs, {n: v[row : row + 1] for n, v in feeds.items()}) for row in range(rows)]
        return [np.concatenate([part[k] for part in parts]) for k in range(len(self.outputs))]

    def _run_cached(self, feeds):
        """Every output for the batch; rows seen moments ago come from the cache, the rest are computed once."""
        keys = _row_keys(feeds)
        known = {}
        for key in keys:
            if key not in known:
                found = self.cache.get(key)
                if found is not None:
                    known[key] = found
        missing = [row for row, key in enumerate(keys) if key not in known]
        reused = len(keys) - len(missing)
        if missing:
            subset = {n: v[missing] for n, v in feeds.items()}
            unique, _ = _unique_rows([keys[row] for row in missing])
            subset = {n: v[unique] for n, v in subset.items()}
            results = self._rowwise(subset)
            for position, row in enumerate(np.asarray(missing)[unique]):
                # Copies: a view would keep the whole batch's arrays alive as long as any row stays cached.
                outputs = {name: value[position].copy() for name, value in zip(self.outputs, results)}
                known[keys[row]] = outputs
                self.cache.put(keys[row], outputs)
            self.counter.add("computed", len(unique))
            reused += len(missing) - len(unique)
        self.counter.add("reused", reused)
        return {name: np.stack([known[key][name] for key in keys]) for name in self.outputs}
