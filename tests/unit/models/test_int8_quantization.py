"""The int8 trunks' weights are 7-bit, so that no sum saturates on CPUs without VNNI (build.quantize_int8)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from services.models.build import quantize_int8


def _matmul_model(path: Path, weight: np.ndarray) -> None:
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "m",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, weight.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, weight.shape[1]])],
        [numpy_helper.from_array(weight, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def _quantized_weight(path: Path) -> np.ndarray:
    model = onnx.load(path)
    return next(numpy_helper.to_array(i) for i in model.graph.initializer if i.name.endswith("_quantized"))


def test_reduced_range_weights_fit_in_seven_bits(tmp_path: Path) -> None:
    weight = np.random.default_rng(0).normal(size=(64, 32)).astype(np.float32)
    _matmul_model(tmp_path / "m.onnx", weight)
    quantize_int8(tmp_path / "m.onnx", tmp_path / "full.onnx", reduce_range=False)
    quantize_int8(tmp_path / "m.onnx", tmp_path / "reduced.onnx")
    full, reduced = _quantized_weight(tmp_path / "full.onnx"), _quantized_weight(tmp_path / "reduced.onnx")
    assert np.abs(full.astype(np.int32)).max() == 127
    assert np.abs(reduced.astype(np.int32)).max() <= 64  # |u8 x s7| pairs sum below 2^15: no saturation


def test_the_served_int8_trunk_has_seven_bit_weights() -> None:
    """What `make models` built: every int8 matrix of the served trunk within ±64 (8-bit ones reach 127)."""
    from services.common import model_io as io
    from services.common.triton_server import repository_problems
    from services.models.build import onnx_path

    repository = Path(__file__).resolve().parents[3] / "triton_models"
    if repository_problems(repository):
        pytest.fail("model repository not built (run `make models`)", pytrace=False)
    if (repository / io.TRUNK / "precision").read_text() != "int8":
        pytest.fail("the repository serves the fp32 trunk: rebuild it with `make models` (int8 by default)", pytrace=False)
    model = onnx.load(onnx_path(repository, io.TRUNK))
    # int8 initializers are the MatMul weights; the embedding tables are uint8, dequantized before any product.
    quantized = [w for w in (numpy_helper.to_array(i) for i in model.graph.initializer if i.name.endswith("_quantized"))
                 if w.dtype == np.int8]
    assert len(quantized) >= 36  # 6 layers x 6 matrices
    assert max(int(np.abs(w.astype(np.int32)).max()) for w in quantized) <= 64
