"""The Markdown report of a results dict (the tables the README's Performance section quotes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.prompts import SIZE_LABELS, SIZES
from bench.stats import fmt


def _latency(results: dict[str, Any]) -> list[str]:
    cells = results.get("latency")
    if not cells:
        return []
    lines = ["### Router-added latency (ms; median of rounds, min–max in brackets)", "",
             "| prompt | conc. | direct p50 | router p50 | added p50 | added p95 | added p99 | router req/s | "
             "blocked share | errors / degraded |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for cell in cells.values():
        lines.append(
            f"| {SIZE_LABELS[cell['size']]} | {cell['concurrency']} | {fmt(cell['direct_p50'])} | "
            f"{fmt(cell['router_p50'])} | **{fmt(cell['added_p50'])}** | {fmt(cell['added_p95'])} | "
            f"{fmt(cell['added_p99'])} | {fmt(cell['router_rps'])} | {cell['blocked_share']:.0%} | "
            f"{cell['errors']} / {cell['degraded']} |")
    share = max(c["client_cpu_share"]["max"] or 0 for c in cells.values())
    lines += ["", "Added = router percentile − direct percentile over the same prompts (those the router sends to "
              "the backend; blocked prompts are excluded from both sides and their share is shown). "
              f"Load generator CPU: at most {share:.0%} of its one pinned core. "
              "Degraded = requests the front let through without a service (deadline missed, fail-open).", ""]
    return lines


def _throughput(results: dict[str, Any]) -> list[str]:
    tp = results.get("throughput")
    if not tp:
        return []
    held = tp.get("max_rate_rps")
    hold = tp["holds"][-1] if tp.get("holds") else None
    lines = ["### Throughput", ""]
    if held and hold:
        lines.append(f"**{held:.1f} requests/s held for {tp['hold_s']:.0f} s** (mixed prompt set, open loop) with "
                     f"router-added p99 {hold['added_p99_ms']:.1f} ms (< {tp['limit_added_p99_ms']:.0f} ms), "
                     f"{hold['errors']} errors, {hold['degraded']} degraded; router p50 {hold['router_p50_ms']:.1f} ms, "
                     f"p99 {hold['router_p99_ms']:.1f} ms.")
    else:
        lines.append("No rate held the limit for the whole hold (see the probes in the JSON).")
    lines += [f"Cores: {results['machine']['cpus']} ({results['machine']['cpu_model']}), shared by every mesh "
              f"process and the load generator (pinned to core {tp['client_core']}, "
              f"{hold['client_cpu_share']:.0%} of it during the hold)." if hold else "",
              f"Closed-loop ceiling at concurrency 8: {tp['ceiling_closed_loop_rps']:.1f} req/s. "
              f"Search: {len(tp['probes'])} probes of {tp['probe_s']:.0f} s, then the hold.", ""]
    return lines


def _breakdown(results: dict[str, Any]) -> list[str]:
    window = results.get("breakdown_c1")
    if not window:
        return []
    n = max(window.get("requests", 0), 1)
    lines = ["### Where the time goes (concurrency 1, mixed prompt set, from the services' own metrics)", "",
             "| stage | calls | mean ms | p50 ms | p99 ms |", "|---|---:|---:|---:|---:|"]
    for s in window["stages"]:
        lines.append(f"| {s['stage']} | {s['count']} | {s['mean_ms']:.2f} | {s['p50_ms']} | {s['p99_ms']} |")
    if window.get("triton_models"):
        lines += ["", "| Triton model | requests | mean batch | queue ms | compute ms | total ms |",
                  "|---|---:|---:|---:|---:|---:|"]
        for model, m in window["triton_models"].items():
            compute = m["compute_input_mean_ms"] + m["compute_infer_mean_ms"] + m["compute_output_mean_ms"]
            lines.append(f"| {model} | {m['requests']} | {m['mean_batch']} | {m['queue_mean_ms']:.2f} | "
                         f"{compute:.2f} | {m['request_mean_ms']:.2f} |")
    cpu = {k: v for k, v in window.get("cpu_s", {}).items() if k not in ("envoy-direct",)}
    if cpu:
        total = sum(cpu.values())
        lines += ["", f"CPU per routed request ({n} requests): " + ", ".join(
            f"{name} {secs / n * 1000:.1f} ms" for name, secs in sorted(cpu.items(), key=lambda kv: -kv[1]))
            + f" — total {total / n * 1000:.1f} ms of CPU per request."]
    return lines + [""]


def _monolith(results: dict[str, Any]) -> list[str]:
    mono, fan, cells = results.get("monolith"), results.get("fanout"), results.get("latency") or {}
    if not mono:
        return []
    lines = ["### Mesh vs monolith (ms, p50; median of rounds)", "",
             "| prompt | monolith, one pass (rows) | fan-out to services (gRPC) | router-added at conc. 1 | "
             "price of the architecture |", "|---|---:|---:|---:|---:|"]
    for size in SIZES:
        one = mono.get(size, {}).get("one_pass", {})
        fan_c = (fan or {}).get(size, {}).get("concurrent", {})
        added = cells.get(f"{size}/c1", {}).get("added_p50", {})
        ratio = f"{added['median'] / one['median']:.1f}×" if added.get("median") and one.get("median") else "–"
        lines.append(f"| {SIZE_LABELS[size]} | {fmt(one)} ({mono.get(size, {}).get('rows_mean', '–')}) | "
                     f"{fmt(fan_c)} | {fmt(added)} | {ratio} |")
    base = results.get("monolith_base")
    if base:
        lines += ["", "The base trunk (all-mpnet-base-v2, int8; `models.trunk: base`), same monolith: " + ", ".join(
            f"{SIZE_LABELS[size]} {fmt(base.get(size, {}).get('one_pass', {}))} ms" for size in SIZES) + "."]
    lines += ["", "Monolith: the served trunk file (heads fused) and the services' tokenizer in one process with "
              "onnxruntime (same thread settings as the Triton backend), measured with the mesh stopped: each "
              "distinct row a request needs (whole text, windows, the embedder's cut) once, every head on it. "
              "The issue's target is router-added ≤ 1.5× this.", ""]
    return lines


def _fanout(results: dict[str, Any]) -> list[str]:
    fan = results.get("fanout")
    if not fan:
        return []
    lines = ["### Concurrency gain of the fan-out (ms, p50 of one decision + guard + cache round)", "",
             "| prompt | concurrent (gather) | sequential | sequential / concurrent |", "|---|---:|---:|---:|"]
    for size in SIZES:
        f = fan.get(size)
        if f:
            lines.append(f"| {SIZE_LABELS[size]} | {fmt(f['concurrent'])} | {fmt(f['sequential'])} | "
                         f"{fmt(f['sequential_over_concurrent'], 2)}× |")
    return lines + [""]


def _cache(results: dict[str, Any]) -> list[str]:
    c = results.get("cache")
    if not c:
        return []
    lines = ["### Semantic cache", "",
             f"Through Envoy, concurrency 1: hit p50 **{fmt(c['hit'])} ms** vs miss answered by the simulator "
             f"{fmt(c['miss'])} ms (the simulator's generation delay is {c['simulator_first_token_ms']:.0f} ms; a "
             f"real LLM's is seconds). Repeats that hit: {fmt(c['hit_ratio_on_repeat'], 2)}.", ""]
    by_size = c.get("lookup_by_size", {})
    if "skipped" in by_size:
        lines += [f"Lookup latency by cache size: skipped ({by_size['skipped']}).", ""]
    elif by_size.get("data", {}).get("results"):
        lines += [f"Lookup latency by cache size (embedded Qdrant, no embedding; `{by_size['command']}`):", "",
                  "| entries | layout | search p50 ms | search p99 ms | cache's own overhead p50 ms |",
                  "|---:|---|---:|---:|---:|"]
        for row in by_size["data"]["results"]:
            # "scoped": entries spread over 100 tenants; "one_scope": every entry in one scope (worst case).
            search, overhead = row.get("search", {}), row.get("lookup_overhead", {})
            lines.append(f"| {row['entries']:,} | {row.get('layout', '')} | {search.get('p50_ms')} | "
                         f"{search.get('p99_ms')} | {overhead.get('p50_ms', '—')} |")
        lines.append("")
    elif by_size:
        lines += [f"Lookup latency by cache size: `{by_size.get('command')}` exited {by_size.get('returncode')}.", ""]
    return lines


def _quality(results: dict[str, Any]) -> list[str]:
    q = results.get("quality")
    if not q or "skipped" in q:
        return []
    return ["### Routing quality through the whole path", "",
            f"Accuracy of `x-vsr-selected-category` on {q['rows']} seeded rows (seed {q['seed']}) of the "
            f"{q['dev_rows_total']}-row dev split of domain.jsonl, sent as chat requests through Envoy: "
            f"**{q['accuracy']:.1%}** (blocked {q['blocked']}, no category header {q['no_category_header']}, "
            f"errors {q['errors']}).", ""]


def _guard_load(results: dict[str, Any]) -> list[str]:
    cells = results.get("guard_load")
    if not cells:
        return []
    lines = ["### Guard under load (every 10th request a jailbreak)", "",
             "| prompts | concurrency | answered/s | p50 ms | p99 ms | 429 | 503 | degraded | unverified | "
             "jailbreaks sent | reached the backend |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in cells:
        lines.append(f"| {c['size']} | {c['concurrency']} | {c['answered_per_s']} | {c['p50_ms']} | {c['p99_ms']} | "
                     f"{c['share_429']:.1%} | {c['share_503']:.1%} | {c['share_degraded']:.1%} | "
                     f"{c['share_unverified']:.1%} | {c['jailbreaks_sent']} | **{c['jailbreaks_reached_backend']}** |")
    return [*lines, ""]


def markdown(results: dict[str, Any], images: list[Path]) -> str:
    m = results["machine"]
    head = [f"## switchyard benchmark {results['timestamp']} (commit {results['commit']})", "",
            f"{m['cpus']} CPUs ({m['cpu_model']}), Python {m['python']}; simulator generation delay "
            f"{results['simulator']['first_token_ms']:.0f} ms; load generator `{results['client']['kind']}` pinned "
            f"to core {results['client']['pinned_core']}; whole run {results.get('elapsed_s', 0):.0f} s; load average "
            f"{m['loadavg_at_start'][0]:.1f} at start, {m.get('loadavg_at_end', [0])[0]:.1f} at end (above ~0.5 other "
            "work shared the CPUs and the figures are inflated).", ""]
    body = (_latency(results) + _throughput(results) + _breakdown(results) + _monolith(results)
            + _fanout(results) + _cache(results) + _quality(results) + _guard_load(results))
    pictures = [f"![{p.stem}]({p.name})" for p in images]
    return "\n".join(head + body + pictures) + "\n"
