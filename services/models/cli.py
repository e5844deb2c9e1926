"""argparse subcommands `models build`, `train {domain,jailbreak,pii}` and `eval`; the lead's CLI calls register()."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from services.models.paths import ModelPaths, default_paths

TASKS = ("domain", "jailbreak", "pii")
# `switchyard train trunk`: the shared multi-task trunk (services.models.trunk), not yet the default layout.
TRAIN_TARGETS = (*TASKS, "trunk")


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

    build_repository(_paths(args), force=args.force, layout=args.layout, int8=args.int8)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from services.models.train import train, train_trunk

    finetuned = Path(args.finetuned) if args.finetuned else None
    for task in args.tasks:
        if task == "trunk":
            record = train_trunk(_paths(args), finetuned)
            print(json.dumps({"task": task, "results": record["results"]})[:3000])
            continue
        record = train(task, _paths(args), args.method, finetuned)
        print(json.dumps({"task": task, "results": record["results"]})[:3000])
    print("weights, model cards and triton_models/ updated")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from services.models.evaluate import run_eval

    tasks = tuple(args.tasks or TASKS)
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
    build.add_argument("--layout", choices=("per_task", "trunk"), default="per_task",
                       help="per_task: one encoder per task (default); trunk: one shared multi-task trunk")
    build.add_argument("--int8", action="store_true", help="trunk layout: int8 dynamic quantization of the trunk (CPU)")
    build.set_defaults(func=cmd_build)

    train = subparsers.add_parser("train", help="train heads on ../shared/data (commercial_ok rows only)")
    train.add_argument("tasks", nargs="+", choices=TRAIN_TARGETS)
    train.add_argument(
        "--method",
        choices=("frozen", "finetune"),
        default="frozen",
        help="frozen: MLP head on the frozen encoder (CPU); finetune: LoRA adapter + head (GPU advised)",
    )
    train.add_argument("--finetuned", help="import a finetune output folder (<task>_encoder_lora.npz, <task>_head.npz; "
                       "for trunk: the output of `python -m services.models.trunk train`)")
    _common(train)
    train.set_defaults(func=cmd_train)

    evaluate = subparsers.add_parser("eval", help="dev-split metrics of the built models (JSON + PNG report)")
    evaluate.add_argument("tasks", nargs="*", help="domain, jailbreak and/or pii (default: all)")
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
