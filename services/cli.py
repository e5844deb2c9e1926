"""The `switchyard` command: run the mesh, serve one service, check a config."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from pathlib import Path

import yaml

from services.common.config import ConfigError, SwitchyardConfig, load_config
from services.common.logs import setup_logging
from services.models.cli import register as register_model_commands

DEFAULT_CONFIG = os.environ.get("SWITCHYARD_CONFIG", "config/config.yaml")
SERVICES = ("front", "decision", "guard", "cache", "simulator")
EXIT_CONFIG = 2


def _load(path: str) -> SwitchyardConfig:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"config error:\n{exc}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None


def cmd_config_check(args: argparse.Namespace) -> int:
    config = _load(args.file)
    print(f"{args.file}: OK ({len(config.routing.models)} models, {len(config.routing.categories)} categories, "
          f"{len(config.backends)} backends, default model {config.routing.default_model})")
    return 0


def cmd_envoy_config(args: argparse.Namespace) -> int:
    from services.mesh.envoy_config import build_envoy_config

    print(yaml.safe_dump(build_envoy_config(_load(args.config)), sort_keys=False), end="")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    config = _load(args.config)
    setup_logging(args.service, config.telemetry.log_level)
    if args.service == "simulator":
        from services.simulator.app import serve as serve_simulator

        asyncio.run(serve_simulator(config.simulator))
        return 0
    from services.common.telemetry import setup_tracing

    # Before the service builds its gRPC channels and server: both are instrumented at creation.
    setup_tracing(args.service, config.telemetry)
    module = __import__(f"services.{args.service}.server", fromlist=["serve"])
    try:
        # Every service watches the same file: a reload reaches all of them (and a bad file none).
        asyncio.run(module.serve(config, Path(args.config)))
    except RuntimeError as exc:  # port taken and similar start-up failures carry their own fix
        print(f"{args.service}: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from services.mesh.supervisor import Mesh, MeshError, endpoint_table
    from services.mesh.envoy_config import EnvoyNotFoundError

    config = _load(args.config)

    async def run() -> int:
        mesh = Mesh(config, Path(args.config), Path(args.run_dir))
        try:
            specs = await mesh.start(timeout_s=args.timeout)
        except (MeshError, EnvoyNotFoundError) as exc:
            print(f"switchyard up: {exc}", file=sys.stderr)
            return 1
        print(endpoint_table(specs, mesh.notes), flush=True)
        print(f"try: curl -s http://{config.envoy.host}:{config.envoy.listener_port}/v1/chat/completions "
              "-H 'content-type: application/json' "
              "-d '{\"model\": \"MoM\", \"messages\": [{\"role\": \"user\", \"content\": \"Solve 3x+5=20\"}]}'",
              flush=True)
        print("Ctrl-C stops everything.", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        # A process that crashes is restarted by the mesh (with backoff); only Ctrl-C/SIGTERM stops all.
        await stop.wait()
        print("stopping...", flush=True)
        await mesh.stop()
        return 0

    return asyncio.run(run())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="switchyard", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="start the whole local mesh (Triton, services, front, Envoy, simulator)")
    up.add_argument("--config", default=DEFAULT_CONFIG)
    up.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for every health check")
    up.add_argument("--run-dir", default=".switchyard/run", help="where generated files (envoy.yaml) go")
    up.set_defaults(func=cmd_up)

    serve = sub.add_parser("serve", help="run one service in the foreground")
    serve.add_argument("service", choices=SERVICES)
    serve.add_argument("--config", default=DEFAULT_CONFIG)
    serve.set_defaults(func=cmd_serve)

    config = sub.add_parser("config", help="configuration tools")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    check = config_sub.add_parser("check", help="validate a config file; exit 2 on error")
    check.add_argument("file")
    check.set_defaults(func=cmd_config_check)

    register_model_commands(sub)

    envoy = sub.add_parser("envoy-config", help="print the Envoy configuration generated from a config")
    envoy.add_argument("--config", default=DEFAULT_CONFIG)
    envoy.set_defaults(func=cmd_envoy_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
