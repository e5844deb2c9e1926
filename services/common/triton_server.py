"""Launching the local tritonserver (nvidia-pytriton wheel) on a model repository, and waiting for it."""

from __future__ import annotations

import os
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from services.common import model_io as io
from services.common.config import TritonConfig
from services.common.tokenizer import tokenizer_path

# The models `switchyard models build` must have produced for the repository to be usable.
REQUIRED_MODELS = (io.TRUNK, *io.ENSEMBLE_NAMES)


class TritonNotFoundError(RuntimeError):
    """The tritonserver binary or its backends are not installed / built."""


class TritonNotReadyError(TimeoutError):
    """tritonserver did not become ready in time."""


@dataclass(frozen=True)
class LaunchSpec:
    """What to run: argv[0] is the tritonserver binary; env is the full environment for the process."""

    argv: list[str]
    env: dict[str, str]


def pytriton_dir() -> Path:
    """site-packages/pytriton/tritonserver of the nvidia-pytriton wheel."""
    import importlib.util

    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise TritonNotFoundError("nvidia-pytriton is not installed: pip install 'nvidia-pytriton>=0.7'")
    return Path(list(spec.submodule_search_locations)[0]) / "tritonserver"


def default_backend_dir(model_repository: Path) -> Path:
    """Where `switchyard models build` writes the backends: .switchyard/triton-backends next to the repo."""
    return Path(model_repository).resolve().parent / ".switchyard" / "triton-backends"


def served_trunk(model_repository: Path) -> str | None:
    """Which trunk the built repository serves (small or base), from the build's marker; None if unbuilt."""
    marker = Path(model_repository) / io.TRUNK / "variant"
    return marker.read_text().strip() if marker.is_file() else None


def repository_problems(model_repository: Path, backend_dir: Path | None = None,
                        trunk: str | None = None) -> list[str]:
    """What is missing for the local server; empty when the repository is built (for `trunk`, if given)."""
    repo = Path(model_repository)
    problems = []
    served = served_trunk(repo)
    if trunk is not None and served is not None and served != trunk:
        problems.append(f"{repo} serves the {served} trunk but models.trunk is {trunk}: run "
                        f"`switchyard models build --trunk {trunk}` (or set models.trunk: {served})")
    for model in REQUIRED_MODELS:
        if not (repo / model / "config.pbtxt").is_file():
            problems.append(f"{repo / model / 'config.pbtxt'} missing")
        elif "platform: \"ensemble\"" not in (repo / model / "config.pbtxt").read_text():
            if not (repo / model / "1" / "model.onnx").is_file():
                problems.append(f"{repo / model / '1' / 'model.onnx'} missing")
    if not tokenizer_path(repo).is_file():
        problems.append(f"{tokenizer_path(repo)} missing")
    backends = backend_dir or default_backend_dir(repo)
    if not (backends / "onnxruntime" / "model.py").is_file():
        problems.append(f"{backends / 'onnxruntime' / 'model.py'} missing")
    return problems


def repository_is_built(model_repository: Path, backend_dir: Path | None = None) -> bool:
    return not repository_problems(model_repository, backend_dir)


def launch_spec(
    config: TritonConfig,
    backend_dir: Path | None = None,
    strict_model_config: bool = True,
    log_verbose: int = 0,
) -> LaunchSpec:
    """argv + env for a local tritonserver serving config.model_repository on config's ports."""
    wheel = pytriton_dir()
    binary = wheel / "bin" / "tritonserver"
    if not binary.is_file():
        raise TritonNotFoundError(f"{binary} missing: reinstall nvidia-pytriton")
    repo = Path(config.model_repository).resolve()
    backends = (backend_dir or default_backend_dir(repo)).resolve()
    problems = repository_problems(repo, backends)
    if problems:
        raise TritonNotFoundError(
            "model repository is not built (run `switchyard models build`): " + "; ".join(problems)
        )
    argv = [
        str(binary),
        f"--model-repository={repo}",
        f"--backend-directory={backends}",
        f"--http-address={config.host}",
        f"--grpc-address={config.host}",
        f"--http-port={config.http_port}",
        f"--grpc-port={config.grpc_port}",
        f"--metrics-port={config.metrics_port}",
        "--allow-metrics=true",
        f"--strict-model-config={'true' if strict_model_config else 'false'}",
        # configs/local.pbtxt (written by the build): one CPU instance per model; see services.models.configs.
        "--model-config-name=local",
        "--log-info=true",
        "--log-warning=true",
        "--log-error=true",
        f"--log-verbose={log_verbose}",
        # Hidden states of a full batch (64 x 256 x 384 floats = 25 MB) cross the stub's shared memory.
        "--backend-config=python,shm-default-byte-size=33554432",
        "--backend-config=python,shm-growth-byte-size=16777216",
        "--exit-on-error=true",
    ]
    env = dict(os.environ)
    libs = wheel.parent.parent / "nvidia_pytriton.libs"
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(libs), env.get("LD_LIBRARY_PATH", "")) if p)
    # The Python backend stub finds numpy/onnxruntime through the python on PATH: use this environment's.
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join(p for p in (venv_bin, env.get("PATH", "")) if p)
    return LaunchSpec(argv, env)


def ready_urls(config: TritonConfig, models: tuple[str, ...] = io.ENSEMBLE_NAMES) -> list[str]:
    """What "Triton is ready" means everywhere (switchyard up, the front's /ready, tests): the server and
    every ensemble the services call answer 200 on Triton's HTTP health endpoints."""
    base = f"http://{config.host}:{config.http_port}/v2"
    return [f"{base}/health/ready", *(f"{base}/models/{m}/ready" for m in models)]


def _ready(config: TritonConfig, models: tuple[str, ...]) -> bool:
    try:
        for url in ready_urls(config, models):
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status != 200:
                    return False
    except (urllib.error.URLError, OSError):
        return False
    return True


def wait_until_ready(
    config: TritonConfig,
    timeout_s: float = 120.0,
    models: tuple[str, ...] = io.ENSEMBLE_NAMES,
    is_alive=lambda: True,
) -> None:
    """Block until the server and `models` answer ready; `is_alive` lets a caller stop early on a crash."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _ready(config, models):
            return
        if not is_alive():
            raise TritonNotReadyError("tritonserver exited before it became ready; see its log")
        time.sleep(0.25)
    raise TritonNotReadyError(
        f"tritonserver on {config.host}:{config.http_port} not ready after {timeout_s:.0f}s; see its log"
    )
