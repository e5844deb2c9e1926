"""The models CLI registers its subcommands on a parent parser."""

from __future__ import annotations

import argparse

from services.models.cli import cmd_build, cmd_eval, cmd_train, register


def test_register_adds_build_train_eval() -> None:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["models", "build", "--force"])
    assert args.func is cmd_build and not args.fp32
    assert parser.parse_args(["models", "build", "--fp32"]).fp32
    args = parser.parse_args(["train", "trunk", "--finetuned", "/tmp/x"])
    assert args.func is cmd_train and args.tasks == ["trunk"] and args.finetuned == "/tmp/x"
    assert parser.parse_args(["eval", "domain"]).func is cmd_eval


def test_only_the_trunk_trains_and_eval_names_its_tasks(capsys) -> None:
    import pytest

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "pii"])
    with pytest.raises(SystemExit, match="unknown task jailbrake"):
        cmd_eval(parser.parse_args(["eval", "jailbrake"]))
