"""Head ONNX graphs compute what the numpy weights say, and pooling ignores padding."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from services.common import model_io as io
from services.models.heads import (
    MLP,
    NeighbourVote,
    pool_normalize_model,
    pooled_head_model,
    token_head_model,
    voting_head_model,
)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def _session(model) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _mlp(inputs: int, outputs: int) -> MLP:
    rng = np.random.default_rng(0)
    return MLP(
        (
            (rng.normal(size=(inputs, 8)).astype(np.float32), rng.normal(size=8).astype(np.float32)),
            (rng.normal(size=(8, outputs)).astype(np.float32), rng.normal(size=outputs).astype(np.float32)),
        )
    )


def test_pooled_head_matches_numpy_and_ignores_padding() -> None:
    rng = np.random.default_rng(1)
    hidden = rng.normal(size=(2, 5, io.HIDDEN_SIZE)).astype(np.float32)
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=np.int64)
    mlp = _mlp(2 * io.HIDDEN_SIZE, 3)
    out = _session(pooled_head_model("h", mlp)).run(None, {io.HIDDEN_STATES: hidden, io.ATTENTION_MASK: mask})[0]
    first = hidden[0, :3]
    features = np.concatenate([first.mean(0), first.max(0)])
    np.testing.assert_allclose(out[0], softmax(mlp.logits(features[None]))[0], rtol=1e-4, atol=1e-5)


def test_token_head_and_pool_normalize() -> None:
    rng = np.random.default_rng(2)
    hidden = rng.normal(size=(1, 4, io.HIDDEN_SIZE)).astype(np.float32)
    mlp = _mlp(io.HIDDEN_SIZE, len(io.PII_BIO_LABELS))
    out = _session(token_head_model("t", mlp)).run(None, {io.HIDDEN_STATES: hidden})[0]
    np.testing.assert_allclose(out[0], softmax(mlp.logits(hidden[0])), rtol=1e-4, atol=1e-5)
    mask = np.array([[1, 1, 0, 0]], dtype=np.int64)
    emb = _session(pool_normalize_model("p")).run(None, {io.HIDDEN_STATES: hidden, io.ATTENTION_MASK: mask})[0]
    expected = hidden[0, :2].mean(0)
    np.testing.assert_allclose(emb[0], expected / np.linalg.norm(expected), rtol=1e-4, atol=1e-5)


def test_mlp_round_trips_through_npz(tmp_path) -> None:
    mlp = _mlp(4, 2)
    mlp.save(tmp_path / "h.npz")
    loaded = MLP.load(tmp_path / "h.npz")
    x = np.ones((1, 4), dtype=np.float32)
    np.testing.assert_allclose(loaded.logits(x), mlp.logits(x))


def _vote(rng, rows: int, classes: int, weight: float = 0.3) -> NeighbourVote:
    vectors = rng.normal(size=(rows, io.HIDDEN_SIZE)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    # float16 as stored, so the graph and numpy read the same index.
    return NeighbourVote(vectors.astype(np.float16), rng.integers(0, classes, size=rows), k=5, temperature=0.05,
                         weight=weight)


def test_voting_head_is_the_mlp_blended_with_the_neighbour_vote(tmp_path) -> None:
    rng = np.random.default_rng(3)
    classes = 4
    hidden = rng.normal(size=(3, 6, io.HIDDEN_SIZE)).astype(np.float32)
    mask = np.array([[1, 1, 1, 1, 0, 0], [1] * 6, [1, 1, 0, 0, 0, 0]], dtype=np.int64)
    mlp = _mlp(2 * io.HIDDEN_SIZE, classes)
    projection = MLP(((rng.normal(size=(io.HIDDEN_SIZE, io.HIDDEN_SIZE)).astype(np.float32) / 20,
                       rng.normal(size=io.HIDDEN_SIZE).astype(np.float32) / 20),))
    vote = _vote(rng, 40, classes)
    # Plant each text's embedding among the index rows, so that its nearest neighbour is known and the
    # vote is not uniform noise.
    feeds = {io.HIDDEN_STATES: hidden, io.ATTENTION_MASK: mask}
    embeddings = _session(pool_normalize_model("p", projection)).run(None, feeds)[0]
    vectors = np.array(vote.vectors, dtype=np.float32)
    vectors[:3] = embeddings
    planted = NeighbourVote(vectors.astype(np.float16), vote.labels, vote.k, vote.temperature, vote.weight)
    planted.save(tmp_path / "v.npz")  # and through the file, as the build reads it
    vote = NeighbourVote.load(tmp_path / "v.npz")

    out = _session(voting_head_model("d", mlp, projection, vote)).run(None, feeds)[0]
    plain = _session(pooled_head_model("h", mlp)).run(None, feeds)[0]
    expected = vote.blend(plain, embeddings)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-5)
    # The planted neighbour (similarity 1) carries the most weight in each text's vote.
    votes = vote.votes(embeddings, classes)
    assert all(votes[i].argmax() == vote.labels[i] for i in range(3))
    assert not np.allclose(out, plain, atol=1e-3)


def test_a_zero_weight_vote_leaves_the_mlp_unchanged() -> None:
    rng = np.random.default_rng(4)
    hidden = rng.normal(size=(2, 4, io.HIDDEN_SIZE)).astype(np.float32)
    mask = np.ones((2, 4), dtype=np.int64)
    mlp = _mlp(2 * io.HIDDEN_SIZE, 3)
    projection = MLP(((np.eye(io.HIDDEN_SIZE, dtype=np.float32), np.zeros(io.HIDDEN_SIZE, dtype=np.float32)),))
    feeds = {io.HIDDEN_STATES: hidden, io.ATTENTION_MASK: mask}
    out = _session(voting_head_model("d", mlp, projection, _vote(rng, 20, 3, weight=0.0))).run(None, feeds)[0]
    plain = _session(pooled_head_model("h", mlp)).run(None, feeds)[0]
    np.testing.assert_allclose(out, plain, rtol=1e-5, atol=1e-6)
