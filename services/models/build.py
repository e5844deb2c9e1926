"""`switchyard models build`: lay out triton_models/ (ONNX files, tokenizer, configs) and the local backend."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import onnx

from services.common import model_io as io
from services.models import encoder_export, heads, lora
from services.models.configs import repository_configs
from services.models.paths import BACKEND_SOURCE, WEIGHTS_DIR, ModelPaths

MODEL_FILE = "model.onnx"
# Head weights per head model, and the optional task-encoder adapter per ensemble.
HEAD_WEIGHTS = {
    io.DOMAIN_HEAD: "domain_head.npz",
    io.JAILBREAK_HEAD: "jailbreak_head.npz",
    io.PII_HEAD: "pii_head.npz",
    io.SAFETY_HEAD: "safety_head.npz",
    io.PAIR_HEAD: "cache_pair_head.npz",
}
# The shared-trunk layout (services.models.trunk): one adapter for all tasks, its heads, the embedder head.
TRUNK_DIR = "trunk"
TRUNK_ADAPTER = "trunk_lora.npz"
EMBED_HEAD = "embed_head.npz"
LAYOUTS = ("per_task", "trunk")
# Still the default: the trunk ships once its dev metrics match the per-task cards (see its model card).
DEFAULT_LAYOUT = "per_task"
TASK_ENCODERS = {
    io.DOMAIN_CLASSIFIER: (io.DOMAIN_ENCODER, "domain_encoder_lora.npz"),
    io.JAILBREAK_CLASSIFIER: (io.JAILBREAK_ENCODER, "jailbreak_encoder_lora.npz"),
    io.PII_TAGGER: (io.PII_ENCODER, "pii_encoder_lora.npz"),
}


class BuildError(RuntimeError):
    """The model repository cannot be built; the message says what is missing."""


def log(message: str) -> None:
    print(f"[models build] {message}", file=sys.stderr, flush=True)


def onnx_path(repository: Path, model: str) -> Path:
    return repository / model / "1" / MODEL_FILE


def task_encoders(weights_dir: Path = WEIGHTS_DIR) -> dict[str, str]:
    """Ensemble name -> task encoder model name, for every committed encoder adapter."""
    return {ens: name for ens, (name, file) in TASK_ENCODERS.items() if (weights_dir / file).is_file()}


def ensemble_encoders(repository: Path) -> dict[str, str]:
    """Ensemble name -> the encoder its first step runs, read from the built configs (either layout)."""
    import re

    found = {}
    for name in io.ENSEMBLE_NAMES:
        config = repository / name / "config.pbtxt"
        match = re.search(r'model_name: "([^"]+)"', config.read_text()) if config.is_file() else None
        if match:
            found[name] = match.group(1)
    return found


def _fresh(target: Path, sources: list[Path]) -> bool:
    """True when target exists and is newer than every source (then the export is skipped)."""
    return target.is_file() and all(target.stat().st_mtime >= s.stat().st_mtime for s in sources if s.exists())


def _write_if_changed(path: Path, text: str) -> bool:
    if path.is_file() and path.read_text() == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return True


def _build_step(name: str, target: Path, sources: list[Path], make: Callable[[Path], None], force: bool) -> None:
    if not force and _fresh(target, sources):
        log(f"{name}: up to date")
        return
    log(f"{name}: writing {target}")
    target.parent.mkdir(parents=True, exist_ok=True)
    make(target)


def build_backends(backend_dir: Path) -> Path:
    """<backend_dir>/python (from the nvidia-pytriton wheel) and <backend_dir>/onnxruntime/model.py (ours)."""
    from services.common.triton_server import pytriton_dir

    wheel = pytriton_dir()
    python_dir = backend_dir / "python"
    files = {
        wheel / "backends" / "python" / "libtriton_python.so": python_dir / "libtriton_python.so",
        wheel / "backends" / "python" / "triton_python_backend_utils.py": python_dir / "triton_python_backend_utils.py",
        wheel / "python_backend_stubs" / "3.11" / "triton_python_backend_stub": python_dir
        / "triton_python_backend_stub",
        BACKEND_SOURCE: backend_dir / "onnxruntime" / "model.py",
    }
    for source, target in files.items():
        if not source.is_file():
            raise BuildError(f"{source} not found: reinstall nvidia-pytriton (pip install 'nvidia-pytriton>=0.7')")
        if not _fresh(target, [source]):
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    log(f"backends: {backend_dir}")
    return backend_dir


def quantize_int8(source: Path, target: Path) -> None:
    """onnxruntime dynamic quantization (int8 weights, per-channel) of an encoder, for CPU serving."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = target.with_suffix(".tmp.onnx")
    quantize_dynamic(str(source), str(tmp), weight_type=QuantType.QInt8, per_channel=True)
    tmp.replace(target)


def build_trunk_repository(paths: ModelPaths, weights_dir: Path = WEIGHTS_DIR, force: bool = False,
                           int8: bool = False) -> None:
    """The shared-trunk layout: `trunk` (base + adapter merged, optionally int8) behind every ensemble."""
    repo = paths.repository
    trunk_dir = weights_dir / TRUNK_DIR
    adapter = trunk_dir / TRUNK_ADAPTER
    if not adapter.is_file():
        raise BuildError(f"{adapter} missing: train it with `switchyard train trunk` (services.models.trunk)")
    base_dir = encoder_export.base_model_dir()
    base_weights = [base_dir / "model.safetensors", Path(encoder_export.__file__)]
    _build_step("encoder", onnx_path(repo, io.ENCODER), base_weights, encoder_export.export_encoder, force)
    encoder_export.copy_tokenizer(repo / io.ENCODER, base_dir)
    fp32 = repo / io.TRUNK / "fp32" / MODEL_FILE
    _build_step(io.TRUNK + " (fp32)", fp32, [*base_weights, adapter, Path(lora.__file__)],
                lambda target: lora.export_merged_encoder(adapter, target), force)
    target = onnx_path(repo, io.TRUNK)
    if int8:
        _build_step(io.TRUNK + " (int8)", target, [fp32, Path(__file__)], lambda t: quantize_int8(fp32, t), True)
    else:
        _build_step(io.TRUNK, target, [fp32], lambda t: shutil.copyfile(fp32, t), True)
    for head_name, file in HEAD_WEIGHTS.items():
        source = trunk_dir / file
        if not source.is_file():
            raise BuildError(f"{source} missing: train it with `switchyard train trunk`")
        mlp = heads.MLP.load(source)
        make = heads.token_head_model if head_name == io.PII_HEAD else heads.pooled_head_model
        _build_step(head_name, onnx_path(repo, head_name), [source, Path(heads.__file__)],
                    lambda t, m=make, n=head_name, w=mlp: onnx.save(m(n, w), str(t)), True)
    projection = heads.MLP.load(trunk_dir / EMBED_HEAD)
    _build_step(io.POOL_NORMALIZE, onnx_path(repo, io.POOL_NORMALIZE), [trunk_dir / EMBED_HEAD, Path(heads.__file__)],
                lambda t: onnx.save(heads.pool_normalize_model(io.POOL_NORMALIZE, projection), str(t)), True)
    for name, text in repository_configs({}, trunk=True).items():
        if _write_if_changed(repo / name / "config.pbtxt", text):
            log(f"{name}: wrote config.pbtxt")
        (repo / name / "1").mkdir(parents=True, exist_ok=True)
    build_backends(paths.backend_dir)
    log(f"repository ready (shared trunk{', int8' if int8 else ''}): {repo}")


def build_repository(paths: ModelPaths, weights_dir: Path = WEIGHTS_DIR, force: bool = False,
                     layout: str = DEFAULT_LAYOUT, int8: bool = False) -> None:
    """Idempotent: exports are skipped when their outputs are newer than their inputs."""
    if layout == "trunk":
        return build_trunk_repository(paths, weights_dir, force, int8)
    if layout != "per_task":
        raise BuildError(f"unknown layout {layout!r}: use one of {', '.join(LAYOUTS)}")
    repo = paths.repository
    base_dir = encoder_export.base_model_dir()
    base_weights = [base_dir / "model.safetensors", Path(encoder_export.__file__)]
    _build_step("encoder", onnx_path(repo, io.ENCODER), base_weights, encoder_export.export_encoder, force)
    encoder_export.copy_tokenizer(repo / io.ENCODER, base_dir)

    encoders = task_encoders(weights_dir)
    for ensemble, encoder_name in encoders.items():
        adapter = weights_dir / TASK_ENCODERS[ensemble][1]
        _build_step(
            encoder_name,
            onnx_path(repo, encoder_name),
            [*base_weights, adapter, Path(lora.__file__)],
            lambda target, a=adapter: lora.export_merged_encoder(a, target),
            force,
        )

    for head_name, file in HEAD_WEIGHTS.items():
        source = weights_dir / file
        if not source.is_file():
            raise BuildError(f"{source} missing: train it with `switchyard train {file.split('_')[0]}`")
        mlp = heads.MLP.load(source)
        make = heads.token_head_model if head_name == io.PII_HEAD else heads.pooled_head_model
        _build_step(
            head_name,
            onnx_path(repo, head_name),
            [source, Path(heads.__file__)],
            lambda target, m=make, n=head_name, w=mlp: onnx.save(m(n, w), str(target)),
            force,
        )
    _build_step(
        io.POOL_NORMALIZE,
        onnx_path(repo, io.POOL_NORMALIZE),
        [Path(heads.__file__)],
        lambda target: onnx.save(heads.pool_normalize_model(io.POOL_NORMALIZE), str(target)),
        force,
    )
    for name, text in repository_configs(encoders).items():
        if _write_if_changed(repo / name / "config.pbtxt", text):
            log(f"{name}: wrote config.pbtxt")
        # Triton needs a version folder even for an ensemble, which has no files of its own.
        (repo / name / "1").mkdir(parents=True, exist_ok=True)
    build_backends(paths.backend_dir)
    log(f"repository ready: {repo}")
