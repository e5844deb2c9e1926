"""The int8 trunk's weights: 7-bit where 8-bit sums would saturate on CPUs without VNNI (build.quantize_int8)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from services.models.build import SATURATING_TRUNKS, quantize_int8


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
    quantize_int8(tmp_path / "m.onnx", tmp_path / "full.onnx")
    quantize_int8(tmp_path / "m.onnx", tmp_path / "reduced.onnx", reduce_range=True)
    full, reduced = _quantized_weight(tmp_path / "full.onnx"), _quantized_weight(tmp_path / "reduced.onnx")
    assert np.abs(full.astype(np.int32)).max() == 127
    assert np.abs(reduced.astype(np.int32)).max() <= 64  # |u8 x s7| pairs sum below 2^15: no saturation


def test_the_base_trunk_is_the_one_built_with_seven_bit_weights() -> None:
    assert SATURATING_TRUNKS == ("base",)
