"""The shared-trunk layout: configs, the heads fused into the trunk's graph, the embedder's projection head,
and the local backend's row coalescing and recent-rows cache."""

from __future__ import annotations

import importlib.util
import sys
import types

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from services.common import model_io as io
from services.models import heads
from services.models.configs import ROW_CACHE_ROWS, TRUNK_QUEUE_DELAY_US, repository_configs
from services.models.paths import BACKEND_SOURCE


def test_every_ensemble_chains_the_one_trunk() -> None:
    configs = repository_configs()
    assert io.TRUNK in configs and f"max_queue_delay_microseconds: {TRUNK_QUEUE_DELAY_US}" in configs[io.TRUNK]
    for name in io.ENSEMBLE_NAMES:
        assert f'model_name: "{io.TRUNK}"' in configs[name]
    # Nothing but the trunk behind any ensemble (nor in the repository), and each
    # ensemble keeps its own output of the trunk's under the name its contract has.
    steps = {line.split('"')[1] for name in io.ENSEMBLE_NAMES for line in configs[name].splitlines()
             if "model_name:" in line}
    assert steps == {io.TRUNK}
    for spec in io.ENSEMBLE_SPECS:
        assert f'output_map {{ key: "{io.TRUNK_OUTPUTS[spec.name]}" value: "{spec.outputs[0].name}" }}' in configs[spec.name]
        assert f'name: "{io.TRUNK_OUTPUTS[spec.name]}"' in configs[io.TRUNK]
    assert f'key: "row_cache_rows"\n  value: {{ string_value: "{ROW_CACHE_ROWS}" }}' in configs[io.TRUNK]
    assert set(configs) == {io.TRUNK, *io.ENSEMBLE_NAMES}


def _toy_trunk(vocab: int = 20) -> onnx.ModelProto:
    """input_ids -> an embedding lookup as `last_hidden_state` (the attention mask is an unused input)."""
    table = np.random.default_rng(1).normal(size=(vocab, io.HIDDEN_SIZE)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", io.INPUT_IDS], [io.HIDDEN_STATES], axis=0)], "toy",
        [helper.make_tensor_value_info(io.INPUT_IDS, TensorProto.INT64, ["b", "t"]),
         helper.make_tensor_value_info(io.ATTENTION_MASK, TensorProto.INT64, ["b", "t"])],
        [helper.make_tensor_value_info(io.HIDDEN_STATES, TensorProto.FLOAT, ["b", "t", io.HIDDEN_SIZE])],
        initializer=[numpy_helper.from_array(table, "table")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", heads.OPSET)])
    model.ir_version = 9
    return model


def test_fused_heads_equal_the_heads_run_on_their_own() -> None:
    rng = np.random.default_rng(0)

    def mlp(outputs: int, width: int) -> heads.MLP:
        return heads.MLP(((rng.normal(size=(width, 32)).astype(np.float32), rng.normal(size=32).astype(np.float32)),
                          (rng.normal(size=(32, outputs)).astype(np.float32), rng.normal(size=outputs).astype(np.float32))))

    # Two pooled heads with identical internal names (w0, b0, ...): the prefixes must keep them apart.
    parts = {"a_probabilities": heads.pooled_head_model("a", mlp(3, 2 * io.HIDDEN_SIZE)),
             "b_probabilities": heads.pooled_head_model("b", mlp(5, 2 * io.HIDDEN_SIZE)),
             "tokens": heads.token_head_model("t", mlp(4, io.HIDDEN_SIZE)),
             io.EMBEDDING: heads.pool_normalize_model("p")}
    trunk = _toy_trunk()
    fused = ort.InferenceSession(heads.fuse_heads(trunk, parts).SerializeToString())
    ids = np.array([[1, 5, 7, 2, 0], [1, 9, 2, 0, 0]], dtype=np.int64)
    mask = (ids != 0).astype(np.int64)
    hidden = ort.InferenceSession(trunk.SerializeToString()).run(None, {io.INPUT_IDS: ids, io.ATTENTION_MASK: mask})[0]
    names = [o.name for o in fused.get_outputs()]
    assert names == [io.HIDDEN_STATES, *parts]
    outputs = dict(zip(names, fused.run(None, {io.INPUT_IDS: ids, io.ATTENTION_MASK: mask})))
    for name, part in parts.items():
        session = ort.InferenceSession(part.SerializeToString())
        feeds = {io.HIDDEN_STATES: hidden, io.ATTENTION_MASK: mask}
        expected = session.run(None, {i.name: feeds[i.name] for i in session.get_inputs()})[0]
        np.testing.assert_array_equal(outputs[name], expected)


def test_fusing_needs_the_token_states() -> None:
    trunk = _toy_trunk()
    trunk.graph.output[0].name = "something_else"
    with pytest.raises(ValueError, match=io.HIDDEN_STATES):
        heads.fuse_heads(trunk, {"x": heads.pool_normalize_model("p")})


def test_pool_normalize_applies_the_projection() -> None:
    rng = np.random.default_rng(0)
    w, b = rng.normal(size=(384, 384)).astype(np.float32), rng.normal(size=384).astype(np.float32)
    model = heads.pool_normalize_model("pool_normalize", heads.MLP(((w, b),)))
    hidden = rng.normal(size=(2, 5, 384)).astype(np.float32)
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=np.int64)
    out = ort.InferenceSession(model.SerializeToString()).run(None, {io.HIDDEN_STATES: hidden, io.ATTENTION_MASK: mask})[0]
    mean = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    expected = mean @ w + b
    np.testing.assert_allclose(out, expected / np.linalg.norm(expected, axis=1, keepdims=True), atol=1e-5)


def _backend_module():
    """services/models/triton_backend/model.py without Triton (its utils module stubbed)."""
    sys.modules.setdefault("triton_python_backend_utils", types.ModuleType("triton_python_backend_utils"))
    spec = importlib.util.spec_from_file_location("switchyard_backend_model", BACKEND_SOURCE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_backend_computes_duplicated_rows_once() -> None:
    ids = np.array([[101, 7, 102], [101, 8, 102], [101, 7, 102], [101, 7, 102]], dtype=np.int64)
    mask = np.ones_like(ids)
    backend = _backend_module()
    unique, inverse = backend._unique_rows(backend._row_keys({"ids": ids, "mask": mask}))
    assert unique.tolist() == [0, 1] and inverse.tolist() == [0, 1, 0, 0]
    np.testing.assert_array_equal(ids[unique][inverse], ids)
    # A row that differs only in its mask is a different row.
    mask2 = mask.copy()
    mask2[3, 2] = 0
    assert len(backend._unique_rows(backend._row_keys({"ids": ids, "mask": mask2}))[0]) == 3


class _CountingSession:
    """Stands in for the onnxruntime session: output = row sum (and its square), counting rows computed."""

    def __init__(self) -> None:
        self.rows = 0

    def run(self, outputs, feeds):
        ids = feeds["input_ids"]
        self.rows += len(ids)
        total = ids.sum(axis=1).astype(np.float32)[:, None]
        return [total, total**2][: len(outputs)]


class _Counter:
    def __init__(self) -> None:
        self.counts = {"computed": 0, "reused": 0}

    def add(self, outcome: str, count: int) -> None:
        self.counts[outcome] += count


def _cached_model(capacity: int):
    backend = _backend_module()
    model = backend.TritonPythonModel()
    model.session, model.inputs, model.outputs = _CountingSession(), ["input_ids", "attention_mask"], ["sum", "square"]
    model.cache, model.counter = backend.RowCache(capacity), _Counter()
    return model


def test_row_cache_answers_a_repeated_row_without_computing_it() -> None:
    model = _cached_model(capacity=8)
    first = {"input_ids": np.array([[1, 2, 3], [4, 5, 6]]), "attention_mask": np.ones((2, 3), dtype=np.int64)}
    out = model._run_cached(first)
    np.testing.assert_array_equal(out["sum"][:, 0], [6, 15])
    assert model.session.rows == 2
    # The next service's request for one of the rows (and a new one, twice) computes only the new one, once.
    second = {"input_ids": np.array([[4, 5, 6], [7, 8, 9], [7, 8, 9]]), "attention_mask": np.ones((3, 3), dtype=np.int64)}
    out = model._run_cached(second)
    np.testing.assert_array_equal(out["sum"][:, 0], [15, 24, 24])
    np.testing.assert_array_equal(out["square"][:, 0], [225, 576, 576])
    assert model.session.rows == 3
    assert model.counter.counts == {"computed": 3, "reused": 2}


def test_row_cache_is_bounded_and_keys_on_the_mask_too() -> None:
    model = _cached_model(capacity=2)
    ones = np.ones((1, 3), dtype=np.int64)
    for row in ([1, 1, 1], [2, 2, 2], [3, 3, 3]):
        model._run_cached({"input_ids": np.array([row]), "attention_mask": ones})
    assert model.session.rows == 3
    model._run_cached({"input_ids": np.array([[1, 1, 1]]), "attention_mask": ones})  # evicted: computed again
    assert model.session.rows == 4
    model._run_cached({"input_ids": np.array([[3, 3, 3]]), "attention_mask": np.array([[1, 1, 0]])})
    assert model.session.rows == 5


class _BatchDependentSession(_CountingSession):
    """Like int8 dynamic quantization: a row's output depends on the other rows of its batch."""

    def run(self, outputs, feeds):
        ids = feeds["input_ids"]
        self.rows += len(ids)
        scaled = (ids.sum(axis=1) / ids.max()).astype(np.float32)[:, None]
        return [scaled, scaled**2][: len(outputs)]


def test_rows_are_computed_one_at_a_time_so_batch_mates_do_not_matter() -> None:
    model = _cached_model(capacity=8)
    model.session = _BatchDependentSession()
    feeds = {"input_ids": np.array([[1, 2, 3], [40, 50, 60]]), "attention_mask": np.ones((2, 3), dtype=np.int64)}
    together = model._run_cached(feeds)["sum"][:, 0]
    alone = [_BatchDependentSession().run(["sum"], {"input_ids": feeds["input_ids"][i : i + 1]})[0][0, 0]
             for i in range(2)]
    np.testing.assert_array_equal(together, alone)
    uncached = _cached_model(capacity=8)
    uncached.cache = None
    uncached.session = _BatchDependentSession()
    np.testing.assert_array_equal(uncached._run(feeds)["sum"][:, 0], alone)


def test_the_local_trunk_runs_alone_without_a_batcher_and_the_ngc_config_keeps_its_queue_policy() -> None:
    from services.models.configs import local_configs

    local, generic = local_configs()[io.TRUNK], repository_configs()[io.TRUNK]
    assert "instance_group [ { count: 1 kind: KIND_CPU } ]" in local and "dynamic_batching" not in local
    assert "instance_group" not in generic and "timeout_action: REJECT" in generic
    assert set(local_configs()) == {io.TRUNK}  # ensembles are scheduled by Triton itself


def test_a_request_whose_caller_gave_up_is_recognised() -> None:
    backend = _backend_module()
    from services.common.triton import DEADLINE_PARAMETER

    assert backend.DEADLINE_PARAMETER == DEADLINE_PARAMETER
    assert backend._expired('{"switchyard_deadline_ms": 1000.0}', now_ms=1000.5)
    assert not backend._expired('{"switchyard_deadline_ms": 1000.0}', now_ms=999.0)
    assert not backend._expired("{}", now_ms=1e15) and not backend._expired("", now_ms=1e15)
    assert not backend._expired("not json", now_ms=1e15)
