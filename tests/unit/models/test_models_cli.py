"""The models CLI registers its subcommands on a parent parser."""

from __future__ import annotations

import argparse

from services.models.cli import cmd_build, cmd_eval, cmd_train, register


def test_register_adds_build_train_eval() -> None:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    assert parser.parse_args(["models", "build", "--force"]).func is cmd_build
    args = parser.parse_args(["train", "pii", "--method", "finetune", "--finetuned", "/tmp/x"])
    assert args.func is cmd_train and args.tasks == ["pii"] and args.method == "finetune"
    assert parser.parse_args(["eval", "domain"]).func is cmd_eval
