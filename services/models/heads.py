"""Small heads as numpy weights (committed) and their ONNX graphs (built from those weights)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from services.common.model_io import (
    ATTENTION_MASK,
    EMBEDDING,
    HIDDEN_SIZE,
    HIDDEN_STATES,
    PROBABILITIES,
)

OPSET = 17
# Added to padded positions before max pooling; hidden states are O(1), so padding never wins.
_PAD_PENALTY = 1e4


@dataclass(frozen=True)
class MLP:
    """Affine layers x @ W + b with ReLU between them; the input standardisation is folded into layer 0."""

    layers: tuple[tuple[np.ndarray, np.ndarray], ...]

    @property
    def n_outputs(self) -> int:
        return int(self.layers[-1][0].shape[1])

    def save(self, path: Path, **metadata: np.ndarray) -> None:
        arrays = {}
        for i, (w, b) in enumerate(self.layers):
            arrays[f"layer{i}_w"] = w.astype(np.float32)
            arrays[f"layer{i}_b"] = b.astype(np.float32)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, **arrays, **metadata)

    @classmethod
    def load(cls, path: Path) -> MLP:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: head weights not found; train them with `switchyard train ...`")
        data = np.load(path)
        count = sum(1 for k in data.files if k.endswith("_w"))
        return cls(tuple((data[f"layer{i}_w"], data[f"layer{i}_b"]) for i in range(count)))

    def logits(self, x: np.ndarray) -> np.ndarray:
        for i, (w, b) in enumerate(self.layers):
            x = x @ w + b
            if i < len(self.layers) - 1:
                x = np.maximum(x, 0)
        return x


def _hidden_input() -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(HIDDEN_STATES, TensorProto.FLOAT, ["batch", "tokens", HIDDEN_SIZE])


def _mask_input() -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(ATTENTION_MASK, TensorProto.INT64, ["batch", "tokens"])


def _pooling_nodes(with_max: bool) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto], str]:
    """Nodes computing masked mean (and masked max) over tokens; returns the name of the pooled tensor."""
    init = [
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis_tokens"),
        numpy_helper.from_array(np.array([-1], dtype=np.int64), "axis_last"),
        numpy_helper.from_array(np.array(1e-9, dtype=np.float32), "eps"),
        numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one"),
        numpy_helper.from_array(np.array(_PAD_PENALTY, dtype=np.float32), "penalty"),
    ]
    nodes = [
        helper.make_node("Cast", [ATTENTION_MASK], ["mask_f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["mask_f", "axis_last"], ["mask_3d"]),
        helper.make_node("Mul", [HIDDEN_STATES, "mask_3d"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "axis_tokens"], ["summed"], keepdims=0),
        helper.make_node("ReduceSum", ["mask_3d", "axis_tokens"], ["count"], keepdims=0),
        helper.make_node("Max", ["count", "eps"], ["count_safe"]),
        helper.make_node("Div", ["summed", "count_safe"], ["mean_pooled"]),
    ]
    if not with_max:
        return nodes, init, "mean_pooled"
    nodes += [
        helper.make_node("Sub", ["mask_3d", "one"], ["pad_neg"]),
        helper.make_node("Mul", ["pad_neg", "penalty"], ["pad_bias"]),
        helper.make_node("Add", [HIDDEN_STATES, "pad_bias"], ["biased"]),
        helper.make_node("ReduceMax", ["biased"], ["max_pooled"], axes=[1], keepdims=0),
        helper.make_node("Concat", ["mean_pooled", "max_pooled"], ["pooled"], axis=-1),
    ]
    return nodes, init, "pooled"


def _mlp_nodes(mlp: MLP, source: str) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto], str]:
    nodes, init, current = [], [], source
    for i, (w, b) in enumerate(mlp.layers):
        init += [
            numpy_helper.from_array(w.astype(np.float32), f"w{i}"),
            numpy_helper.from_array(b.astype(np.float32), f"b{i}"),
        ]
        nodes += [
            helper.make_node("MatMul", [current, f"w{i}"], [f"mm{i}"]),
            helper.make_node("Add", [f"mm{i}", f"b{i}"], [f"z{i}"]),
        ]
        current = f"z{i}"
        if i < len(mlp.layers) - 1:
            nodes.append(helper.make_node("Relu", [current], [f"a{i}"]))
            current = f"a{i}"
    nodes.append(helper.make_node("Softmax", [current], [PROBABILITIES], axis=-1))
    return nodes, init, PROBABILITIES


def _embedding_nodes(pooled: str, projection: MLP | None, output: str,
                     prefix: str = "") -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Pooled states -> (linear map, with the embedder head's projection) -> L2 normalisation."""
    nodes, init = [], []
    if projection is not None:
        (w, b), = projection.layers
        init += [numpy_helper.from_array(w.astype(np.float32), f"{prefix}proj_w"),
                 numpy_helper.from_array(b.astype(np.float32), f"{prefix}proj_b")]
        nodes += [helper.make_node("MatMul", [pooled, f"{prefix}proj_w"], [f"{prefix}proj_mm"]),
                  helper.make_node("Add", [f"{prefix}proj_mm", f"{prefix}proj_b"], [f"{prefix}projected"])]
        pooled = f"{prefix}projected"
    nodes.append(helper.make_node("LpNormalization", [pooled], [output], axis=-1, p=2))
    return nodes, init


def _model(name: str, nodes, init, inputs, outputs) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="switchyard")
    # onnxruntime 1.19 (the oldest we support) reads IR version 9.
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


def pooled_head_model(name: str, mlp: MLP) -> onnx.ModelProto:
    """(last_hidden_state, attention_mask) -> probabilities [B, classes] via mean+max pooling and the MLP."""
    pool_nodes, pool_init, pooled = _pooling_nodes(with_max=True)
    mlp_nodes, mlp_init, _ = _mlp_nodes(mlp, pooled)
    output = helper.make_tensor_value_info(PROBABILITIES, TensorProto.FLOAT, ["batch", mlp.n_outputs])
    return _model(name, pool_nodes + mlp_nodes, pool_init + mlp_init, [_hidden_input(), _mask_input()], [output])


@dataclass(frozen=True)
class NeighbourVote:
    """The domain head's second opinion: a vote of the k train rows nearest to the text in the trunk's own
    embedding space (the embedder head's vector), blended into the MLP's distribution.

    The MLP and a nearest-neighbour vote err on different questions (a k-NN over frozen embeddings holds up
    as well as the fine-tuned head on unseen questions, each right where the other is not), so the blend
    is better than either; it costs one [1 x 384] x [384 x N] product per row, inside the same trunk
    execution. Weights: exp((similarity - best) / temperature) per neighbour; output
    (1 - weight) * MLP + weight * vote, still a distribution.
    """

    vectors: np.ndarray  # [N, HIDDEN_SIZE], unit rows (float16 on disk)
    labels: np.ndarray  # [N] class index
    k: int
    temperature: float
    weight: float

    def save(self, path: Path, **metadata: np.ndarray) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, vectors=self.vectors.astype(np.float16), labels=self.labels.astype(np.int16),
                            k=np.int64(self.k), temperature=np.float32(self.temperature),
                            weight=np.float32(self.weight), **metadata)

    @classmethod
    def load(cls, path: Path) -> NeighbourVote:
        data = np.load(path)
        return cls(data["vectors"], data["labels"].astype(np.int64), int(data["k"]), float(data["temperature"]),
                   float(data["weight"]))

    def votes(self, embeddings: np.ndarray, n_classes: int) -> np.ndarray:
        """[B, n_classes] soft votes for unit embeddings [B, HIDDEN_SIZE] (the numpy twin of the graph)."""
        sims = embeddings.astype(np.float32) @ self.vectors.astype(np.float32).T
        nearest = np.argsort(-sims, axis=1, kind="stable")[:, : self.k]
        top = np.take_along_axis(sims, nearest, axis=1)
        w = np.exp((top - top[:, :1]) / self.temperature)
        out = np.zeros((len(sims), n_classes), dtype=np.float64)
        for j in range(self.k):
            np.add.at(out, (np.arange(len(sims)), self.labels[nearest[:, j]]), w[:, j])
        return (out / out.sum(axis=1, keepdims=True)).astype(np.float32)

    def blend(self, probabilities: np.ndarray, embeddings: np.ndarray) -> np.ndarray:
        votes = self.votes(embeddings, probabilities.shape[1])
        return ((1 - self.weight) * probabilities + self.weight * votes).astype(np.float32)


def _neighbour_vote_nodes(vote: NeighbourVote, projection: MLP, n_classes: int,
                          mlp_probabilities: str) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto], str]:
    """Nodes from the token states to the blended distribution (the MLP's probabilities already computed)."""
    # The same embedding as the embedder head's (its projection of the same mean-pooled row).
    nodes, init = _embedding_nodes("mean_pooled", projection, "nv_embedding", prefix="nv_")
    onehot = np.eye(n_classes, dtype=np.float32)[vote.labels]
    init += [
        # float16 in the file (half the size); onnxruntime folds the Cast once, at load.
        numpy_helper.from_array(np.ascontiguousarray(vote.vectors.astype(np.float16).T), "nv_index_t16"),
        numpy_helper.from_array(onehot, "nv_onehot"),
        numpy_helper.from_array(np.array([vote.k], dtype=np.int64), "nv_k"),
        numpy_helper.from_array(np.array(1.0 / vote.temperature, dtype=np.float32), "nv_inv_temp"),
        numpy_helper.from_array(np.array(vote.weight, dtype=np.float32), "nv_weight"),
        numpy_helper.from_array(np.array(1.0 - vote.weight, dtype=np.float32), "nv_keep"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "nv_axis1"),
        numpy_helper.from_array(np.array([-1], dtype=np.int64), "nv_axis_last"),
    ]
    nodes += [
        helper.make_node("Cast", ["nv_index_t16"], ["nv_index_t"], to=TensorProto.FLOAT),
        helper.make_node("MatMul", ["nv_embedding", "nv_index_t"], ["nv_sims"]),
        helper.make_node("TopK", ["nv_sims", "nv_k"], ["nv_top", "nv_nearest"], axis=-1, largest=1, sorted=1),
        helper.make_node("ReduceMax", ["nv_top"], ["nv_best"], axes=[1], keepdims=1),
        helper.make_node("Sub", ["nv_top", "nv_best"], ["nv_gap"]),
        helper.make_node("Mul", ["nv_gap", "nv_inv_temp"], ["nv_scaled"]),
        helper.make_node("Exp", ["nv_scaled"], ["nv_w"]),
        helper.make_node("Gather", ["nv_onehot", "nv_nearest"], ["nv_labels"], axis=0),
        helper.make_node("Unsqueeze", ["nv_w", "nv_axis_last"], ["nv_w3"]),
        helper.make_node("Mul", ["nv_labels", "nv_w3"], ["nv_weighted"]),
        helper.make_node("ReduceSum", ["nv_weighted", "nv_axis1"], ["nv_tally"], keepdims=0),
        helper.make_node("ReduceSum", ["nv_w", "nv_axis1"], ["nv_total"], keepdims=1),
        helper.make_node("Div", ["nv_tally", "nv_total"], ["nv_votes"]),
        helper.make_node("Mul", [mlp_probabilities, "nv_keep"], ["nv_mlp_part"]),
        helper.make_node("Mul", ["nv_votes", "nv_weight"], ["nv_vote_part"]),
        helper.make_node("Add", ["nv_mlp_part", "nv_vote_part"], [PROBABILITIES]),
    ]
    return nodes, init, PROBABILITIES


def voting_head_model(name: str, mlp: MLP, projection: MLP, vote: NeighbourVote) -> onnx.ModelProto:
    """pooled_head_model with the neighbour vote blended in (the domain head with `domain_neighbours.npz`)."""
    pool_nodes, pool_init, pooled = _pooling_nodes(with_max=True)
    mlp_nodes, mlp_init, _ = _mlp_nodes(mlp, pooled)
    # The MLP's softmax feeds the blend instead of being the output.
    mlp_nodes[-1].output[:] = ["mlp_probabilities"]
    vote_nodes, vote_init, _ = _neighbour_vote_nodes(vote, projection, mlp.n_outputs, "mlp_probabilities")
    output = helper.make_tensor_value_info(PROBABILITIES, TensorProto.FLOAT, ["batch", mlp.n_outputs])
    return _model(name, pool_nodes + mlp_nodes + vote_nodes, pool_init + mlp_init + vote_init,
                  [_hidden_input(), _mask_input()], [output])


def token_head_model(name: str, mlp: MLP) -> onnx.ModelProto:
    """last_hidden_state -> probabilities [B, T, labels], one distribution per token."""
    nodes, init, _ = _mlp_nodes(mlp, HIDDEN_STATES)
    output = helper.make_tensor_value_info(PROBABILITIES, TensorProto.FLOAT, ["batch", "tokens", mlp.n_outputs])
    return _model(name, nodes, init, [_hidden_input()], [output])


def pool_normalize_model(name: str, projection: MLP | None = None) -> onnx.ModelProto:
    """(last_hidden_state, attention_mask) -> L2-normalised mean pooling, the sentence-transformers embedding.

    With a projection (the shared trunk's embedder head), the pooled vector is first mapped linearly back
    into the base model's embedding space.
    """
    nodes, init, pooled = _pooling_nodes(with_max=False)
    embed_nodes, embed_init = _embedding_nodes(pooled, projection, EMBEDDING)
    nodes += embed_nodes
    init += embed_init
    output = helper.make_tensor_value_info(EMBEDDING, TensorProto.FLOAT, ["batch", HIDDEN_SIZE])
    return _model(name, nodes, init, [_hidden_input(), _mask_input()], [output])


def fuse_heads(trunk: onnx.ModelProto, heads: dict[str, onnx.ModelProto]) -> onnx.ModelProto:
    """One graph: the trunk, then every head on its token states; output name -> head model in `heads`.

    Served as the `trunk` model, so one execution answers every ensemble (each maps the output it needs):
    no hidden-state tensors cross process boundaries and no head is scheduled on its own. The heads'
    names are prefixed with their output name, so that equal internal names do not collide; they read
    the trunk's `last_hidden_state` and the graph's `attention_mask`, which keep their names. Each head's
    outputs equal the separate head model's on the same token states exactly (same nodes, same order).
    """
    graph = onnx.GraphProto()
    graph.CopyFrom(trunk.graph)
    shared = {HIDDEN_STATES, ATTENTION_MASK}
    hidden = [o for o in graph.output if o.name == HIDDEN_STATES]
    if not hidden:
        raise ValueError(f"the trunk graph has no {HIDDEN_STATES!r} output to feed the heads")
    # The token states stay an output (first) for the tools that refit heads on the frozen trunk; Triton's
    # config does not list it, so serving never copies it out.
    del graph.output[:]
    graph.output.extend(hidden)
    for output_name, head in heads.items():
        (head_output,) = head.graph.output
        renamed = {head_output.name: output_name}

        def name(value: str, prefix: str = output_name) -> str:
            if value in shared or value == "":
                return value
            return renamed.setdefault(value, f"{prefix}/{value}")

        for tensor in head.graph.initializer:
            copy = graph.initializer.add()
            copy.CopyFrom(tensor)
            copy.name = name(tensor.name)
        for index, node in enumerate(head.graph.node):
            copy = graph.node.add()
            copy.CopyFrom(node)
            copy.name = f"{output_name}/{index}_{node.name or node.op_type}"
            copy.input[:] = [name(v) for v in node.input]
            copy.output[:] = [name(v) for v in node.output]
        out = graph.output.add()
        out.CopyFrom(head_output)
        out.name = output_name
    used = {value for node in graph.node for value in node.input}
    kept = [tensor for tensor in graph.initializer if tensor.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    fused = helper.make_model(graph, opset_imports=list(trunk.opset_import), producer_name="switchyard")
    fused.ir_version = trunk.ir_version
    onnx.checker.check_model(fused)
    return fused
