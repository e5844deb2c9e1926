"""Seeded torch training of the small MLP heads on cached features, with model selection on dev."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from services.models.heads import MLP


@dataclass(frozen=True)
class HeadRecipe:
    """Hyper-parameters of one head; written into the model card."""

    hidden: tuple[int, ...] = ()
    epochs: int = 30
    batch_size: int = 256
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    dropout: float = 0.1
    balanced_classes: bool = False
    seed: int = 13


def train_mlp(
    x: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    recipe: HeadRecipe,
    select: Callable[[MLP], float],
) -> tuple[MLP, int, float]:
    """Train; after each epoch score the head with `select` (higher is better); return best head, epoch, score."""
    import torch

    torch.manual_seed(recipe.seed)
    torch.use_deterministic_algorithms(True)
    rng = np.random.default_rng(recipe.seed)
    mean = x.mean(axis=0).astype(np.float32)
    std = (x.std(axis=0) + 1e-6).astype(np.float32)
    xt = torch.from_numpy(((x - mean) / std).astype(np.float32))
    yt = torch.from_numpy(y.astype(np.int64))
    sizes = (x.shape[1], *recipe.hidden, n_classes)
    layers: list[torch.nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(torch.nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers += [torch.nn.ReLU(), torch.nn.Dropout(recipe.dropout)]
    net = torch.nn.Sequential(*layers)
    weight = None
    if recipe.balanced_classes:
        counts = np.bincount(y, minlength=n_classes).astype(np.float32)
        weight = torch.from_numpy(counts.sum() / np.maximum(counts, 1) / n_classes)
    loss_fn = torch.nn.CrossEntropyLoss(weight=weight)
    optimizer = torch.optim.AdamW(net.parameters(), lr=recipe.learning_rate, weight_decay=recipe.weight_decay)
    best: tuple[MLP, int, float] | None = None
    for epoch in range(1, recipe.epochs + 1):
        net.train()
        order = torch.from_numpy(rng.permutation(len(y)))
        for start in range(0, len(y), recipe.batch_size):
            idx = order[start : start + recipe.batch_size]
            optimizer.zero_grad()
            loss_fn(net(xt[idx]), yt[idx]).backward()
            optimizer.step()
        net.eval()
        head = _to_mlp(net, mean, std)
        score = select(head)
        if best is None or score > best[2]:
            best = (head, epoch, score)
    assert best is not None
    return best


def _to_mlp(net, mean: np.ndarray, std: np.ndarray) -> MLP:
    linears = [m for m in net if hasattr(m, "weight")]
    layers = []
    for i, linear in enumerate(linears):
        w = linear.weight.detach().numpy().T.copy()
        b = linear.bias.detach().numpy().copy()
        if i == 0:
            # Fold (x - mean) / std into the first layer so the ONNX head takes raw features.
            b = b - (mean / std) @ w
            w = w / std[:, None]
        layers.append((w.astype(np.float32), b.astype(np.float32)))
    return MLP(tuple(layers))


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)
