"""PNG plots of a results dict: latency CDFs per cell, throughput vs latency, per-stage breakdown."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on CI or here
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from bench.prompts import SIZE_LABELS, SIZES  # noqa: E402


def latency_cdfs(results: dict[str, Any], path: Path) -> Path | None:
    cells = results.get("latency")
    if not cells:
        return None
    concurrencies = sorted({c["concurrency"] for c in cells.values()})
    fig, axes = plt.subplots(len(SIZES), len(concurrencies), figsize=(4.2 * len(concurrencies), 3.2 * len(SIZES)),
                             squeeze=False)
    for row, size in enumerate(SIZES):
        for col, conc in enumerate(concurrencies):
            ax = axes[row][col]
            cell = cells.get(f"{size}/c{conc}")
            if cell is None:
                ax.axis("off")
                continue
            for key, label, color in (("direct_samples", "Envoy → simulator", "tab:gray"),
                                      ("router_samples", "Envoy → switchyard → simulator", "tab:blue")):
                data = np.sort(np.asarray(cell[key]))
                if len(data):
                    ax.plot(data, np.linspace(0, 1, len(data)), label=label, color=color)
            ax.set_xscale("log")
            ax.set_title(f"{SIZE_LABELS[size]}, concurrency {conc}", fontsize=9)
            ax.set_xlabel("latency (ms)", fontsize=8)
            ax.set_ylabel("fraction of requests", fontsize=8)
            ax.grid(alpha=0.3, which="both")
    axes[0][0].legend(fontsize=7, loc="lower right")
    fig.suptitle("Latency CDFs (routed requests, all rounds pooled)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def throughput_curve(results: dict[str, Any], path: Path) -> Path | None:
    tp = results.get("throughput")
    if not tp or not tp.get("probes"):
        return None
    points = sorted(tp["probes"] + tp.get("holds", []), key=lambda p: p["rate"])
    rates = [p["rate"] for p in points]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for key, label, style in (("router_p50_ms", "router p50", "o-"), ("router_p99_ms", "router p99", "s-"),
                              ("direct_p99_ms", "direct p99", "^--"), ("added_p99_ms", "router-added p99", "d-")):
        ax.plot(rates, [p[key] if p[key] is not None else np.nan for p in points], style, label=label)
    ax.axhline(tp["limit_added_p99_ms"], color="red", linestyle=":", label="limit (added p99)")
    for p in points:
        if not p["passed"]:
            ax.annotate("fail", (p["rate"], p["router_p99_ms"] or 0), fontsize=7, color="red")
    if tp.get("max_rate_rps"):
        ax.axvline(tp["max_rate_rps"], color="green", linestyle="--",
                   label=f"held {tp['hold_s']:.0f}s: {tp['max_rate_rps']:.1f} rps")
    ax.set_yscale("log")
    ax.set_xlabel("offered rate (requests/s, open loop, mixed prompt set)")
    ax.set_ylabel("latency (ms)")
    ax.set_title(f"Throughput vs latency on {results['machine']['cpus']} CPU cores")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def breakdown_bars(results: dict[str, Any], path: Path) -> Path | None:
    window = results.get("breakdown_c1")
    if not window or not window.get("stages"):
        return None
    stages = window["stages"]
    models = window.get("triton_models", {})
    labels = [s["stage"] for s in stages] + [f"Triton {m}" for m in models]
    means = [s["mean_ms"] for s in stages] + [m["request_mean_ms"] for m in models.values()]
    queues = [0.0] * len(stages) + [m["queue_mean_ms"] for m in models.values()]
    fig, ax = plt.subplots(figsize=(8, 0.32 * len(labels) + 1.2))
    y = np.arange(len(labels))
    ax.barh(y, means, color="tab:blue", label="mean time")
    ax.barh(y, queues, color="tab:orange", label="of which Triton queue")
    ax.set_yticks(y, labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("mean ms per call (concurrency 1, mixed prompt set)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def write_plots(results: dict[str, Any], out: Path, stamp: str) -> list[Path]:
    """Timestamped PNGs plus latest-*.png copies, which the README links."""
    written = []
    for name, fn in (("latency-cdf", latency_cdfs), ("throughput", throughput_curve), ("breakdown", breakdown_bars)):
        path = fn(results, out / f"{stamp}-{name}.png")
        if path is not None:
            (out / f"latest-{name}.png").write_bytes(path.read_bytes())
            written.append(path)
    return written
