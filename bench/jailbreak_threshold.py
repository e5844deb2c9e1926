"""The jailbreak threshold sweep: what the guard's verdicts cost and catch at each threshold, on dev.

`python -m bench.jailbreak_threshold [REPOSITORY]` scores the built trunk (onnxruntime, as the model cards
do) once, then prints and writes (bench/results/jailbreak_threshold.json) per threshold: F1 and FPR on the
commercial dev rows, the long-benign FPR (whole text and through the guard's windows), real user chats,
subject questions and short everyday instructions flagged, buried-injection recall, and evasions kept. The
guard's default (services.common.config.JailbreakPolicy.threshold) is the lowest threshold with FPR <= 1 %
and long-benign FPR <= 2 % (whole and windows); the sweep says which one that is for the trunk at hand.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from services.common.config import JailbreakPolicy
from services.models import metrics
from services.models.evaluate import SHORT_INSTRUCTIONS, OnnxPipeline, score_jailbreak_dev, share_flagged
from services.models.paths import default_paths

THRESHOLDS = (0.5, 0.8, 0.9, 0.95, 0.96, 0.97, 0.98, 0.99, 0.995, 0.999)
RESULTS = Path(__file__).resolve().parent / "results" / "jailbreak_threshold.json"
# The limits the default threshold has to keep (README, "Models").
MAX_FPR, MAX_FPR_LONG = 0.01, 0.02


def sweep(repository: Path, thresholds: tuple[float, ...] = THRESHOLDS) -> dict:
    started = time.time()
    # The card's rows and probes (evaluate.score_jailbreak_dev), so at the default threshold the sweep gives the
    # card's figures; the evasion probes are the jailbreaks blocked at the default, and at t the share of those
    # still blocked at t that stay blocked with harmless text added.
    d = score_jailbreak_dev(OnnxPipeline(repository), default_paths(), JailbreakPolicy().threshold)
    print(f"[sweep] scored in {time.time() - started:.0f} s", file=sys.stderr, flush=True)
    c = d.commercial
    table = []
    for t in thresholds:
        report = metrics.binary_report(d.labels[c], d.scores[c], d.lengths[c], t)
        table.append({
            "threshold": t, "f1": report["f1"], "recall": report["recall"], "fpr": report["fpr"],
            "fpr_long_benign": report["fpr_long_benign"], "fpr_long_benign_windows": share_flagged(d.long_windows, t),
            "fpr_real_user_chats": share_flagged(d.scores[d.userchat], t), "fpr_subject_questions": share_flagged(d.subject, t),
            "fpr_short_instructions": share_flagged(d.short, t), "buried_recall": share_flagged(d.buried, t),
            "evasion_kept": share_flagged(d.evasion[d.scores[d.evasion_owners] >= t], t),
        })
    within = [row["threshold"] for row in table if row["fpr"] <= MAX_FPR and row["fpr_long_benign"] <= MAX_FPR_LONG
              and row["fpr_long_benign_windows"] <= MAX_FPR_LONG]
    flagged = {text: round(float(s), 4) for text, s in zip(SHORT_INSTRUCTIONS, d.short) if s >= min(thresholds)}
    return {"repository": str(repository), "thresholds": table,
            "lowest_within_limits": min(within) if within else None,
            "limits": {"fpr": MAX_FPR, "fpr_long_benign": MAX_FPR_LONG, "fpr_long_benign_windows": MAX_FPR_LONG},
            "short_instructions_scored_high": flagged}


def main() -> None:
    repository = Path(sys.argv[1]) if len(sys.argv) > 1 else default_paths().repository
    result = sweep(repository)
    keys = [k for k in result["thresholds"][0] if k != "threshold"]
    print("threshold " + " ".join(f"{k[:14]:>14}" for k in keys))
    for row in result["thresholds"]:
        print(f"{row['threshold']:>9} " + " ".join(f"{row[k]:>14}" for k in keys))
    print(f"lowest threshold within the limits (FPR <= {MAX_FPR}, long-benign <= {MAX_FPR_LONG}, whole and "
          f"windows): {result['lowest_within_limits']}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    print(f"written: {RESULTS}")


if __name__ == "__main__":
    main()
