"""LoRA adapters for the encoder: trained small, committed as .npz, merged into a task encoder at build time."""

from __future__ import annotations

from pathlib import Path

import numpy as np

# Linear layers of each BERT block (the small trunk, MiniLM) that get an adapter.
TARGETS = ("query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense")
# The same layers of an MPNet block (the base trunk): attention projections q/k/v/o, then the feed-forward pair.
MPNET_TARGETS = ("attention.attn.q", "attention.attn.k", "attention.attn.v", "attention.attn.o", "intermediate.dense",
                 "output.dense")


def _is_target(name: str) -> bool:
    return name.startswith("encoder.layer.") and any(name.endswith(t) for t in TARGETS + MPNET_TARGETS)


def targets_of(model) -> tuple[str, ...]:
    """The adapter targets of this encoder's architecture (for records and cards)."""
    return MPNET_TARGETS if getattr(model.config, "model_type", "") == "mpnet" else TARGETS


def add_adapters(model, rank: int = 16, alpha: float = 32.0):
    """Wrap target nn.Linear layers with trainable low-rank updates; freeze everything else."""
    import torch

    class LoRALinear(torch.nn.Module):
        def __init__(self, base: torch.nn.Linear) -> None:
            super().__init__()
            self.base = base
            self.scale = alpha / rank
            self.lora_a = torch.nn.Parameter(torch.randn(rank, base.in_features) * 0.01)
            self.lora_b = torch.nn.Parameter(torch.zeros(base.out_features, rank))

        def forward(self, x):
            return self.base(x) + (x @ self.lora_a.T @ self.lora_b.T) * self.scale

    for p in model.parameters():
        p.requires_grad_(False)
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and _is_target(n)]
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, LoRALinear(getattr(parent, child)))
    return model


def adapter_arrays(model) -> dict[str, np.ndarray]:
    """The trained deltas, already scaled: name -> (B @ A) * scale factors kept as A and B*scale."""
    arrays = {}
    for name, module in model.named_modules():
        if hasattr(module, "lora_a"):
            arrays[f"{name}.a"] = module.lora_a.detach().cpu().float().numpy()
            arrays[f"{name}.b"] = (module.lora_b.detach().cpu().float() * module.scale).numpy()
    return arrays


def merge_adapter(model, adapter: Path):
    """Add B @ A to each target weight of a plain (unwrapped) encoder, in place."""
    import torch

    data = np.load(adapter)
    modules = dict(model.named_modules())
    for key in data.files:
        if not key.endswith(".a"):
            continue
        name = key[:-2]
        # Adapters may be stored in fp16; the product is taken in fp32.
        delta = torch.from_numpy(data[f"{name}.b"].astype(np.float32) @ data[key].astype(np.float32))
        with torch.no_grad():
            modules[name].weight += delta.to(modules[name].weight)
    return model


def export_merged_encoder(adapter: Path, target: Path, model_dir: Path | None = None) -> None:
    """ONNX of the encoder in model_dir (default: the small trunk's MiniLM) with the adapter merged in."""
    from services.models.encoder_export import export_encoder, load_torch_encoder

    export_encoder(target, merge_adapter(load_torch_encoder(model_dir), adapter))
