"""The shared-trunk layout: configs, the embedder's projection head and the backend's row coalescing."""

from __future__ import annotations

import importlib.util
import sys
import types

import numpy as np
import onnxruntime as ort

from services.common import model_io as io
from services.models import heads
from services.models.configs import TRUNK_QUEUE_DELAY_US, repository_configs
from services.models.paths import BACKEND_SOURCE


def test_every_ensemble_chains_the_one_trunk() -> None:
    configs = repository_configs()
    assert io.TRUNK in configs and f"max_queue_delay_microseconds: {TRUNK_QUEUE_DELAY_US}" in configs[io.TRUNK]
    for name in io.ENSEMBLE_NAMES:
        assert f'model_name: "{io.TRUNK}"' in configs[name]
    # No other encoder behind any ensemble (the base `encoder` serves only the yardstick and benchmarks).
    steps = {line.split('"')[1] for name in io.ENSEMBLE_NAMES for line in configs[name].splitlines()
             if "model_name:" in line}
    assert steps == {io.TRUNK, *(s.name for s in (io.DOMAIN_HEAD_SPEC, io.JAILBREAK_HEAD_SPEC, io.PII_HEAD_SPEC,
                                                   io.POOL_NORMALIZE_SPEC, io.SAFETY_HEAD_SPEC, io.PAIR_HEAD_SPEC))}


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
    mask[1, 2] = 1
    unique, inverse = _backend_module()._unique_rows([ids, mask])
    assert unique.tolist() == [0, 1] and inverse.tolist() == [0, 1, 0, 0]
    np.testing.assert_array_equal(ids[unique][inverse], ids)
    # A row that differs only in its mask is a different row.
    mask2 = mask.copy()
    mask2[3, 2] = 0
    assert len(_backend_module()._unique_rows([ids, mask2])[0]) == 3
