"""The chart's Triton model settings parse as Triton model configs, model by model and variant by variant.

The Triton pod's init container appends the rendered fragment (instance_group, TensorRT
optimization) to every onnxruntime model's config.pbtxt as configs/helm.pbtxt. Here that very
script runs on the committed repository, and every result is parsed in protobuf text format
against Triton's ModelConfig (tritonclient's model_config_pb2): a misspelled field, a wrong enum
or a field set twice fails the parse, as it would fail Triton's model load.
"""

from __future__ import annotations

import re

import shutil
import subprocess
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from services.common import model_io as io

from .conftest import FULLNAME, REPO, VARIANTS, helm_template, one, render, router_config_data

MODELS = REPO / "triton_models"
ModelConfig = model_config_pb2.ModelConfig
KIND_GPU = model_config_pb2.ModelInstanceGroup.KIND_GPU
KIND_CPU = model_config_pb2.ModelInstanceGroup.KIND_CPU
WORKSPACE = 2147483648

# name -> (`helm template` arguments, instance kind, instance count, TensorRT precision or None)
SETTINGS: dict[str, tuple[list[str], int, int, str | None]] = {
    **{name: (args, KIND_GPU, 1, None) for name, args in VARIANTS.items() if name not in ("dev", "gpu-base")},
    "dev": (VARIANTS["dev"], KIND_CPU, 1, None),
    "gpu-base": (VARIANTS["gpu-base"], KIND_GPU, 1, "FP16"),
    "cpu-3-instances": (["--set", "triton.gpu.enabled=false", "--set", "triton.cpuInstances=3"], KIND_CPU, 3, None),
    "gpu-2-instances": (["--set", "triton.gpu.instancesPerGpu=2"], KIND_GPU, 2, None),
    "tensorrt-fp16": (["--set", "triton.tensorrt.enabled=true"], KIND_GPU, 1, "FP16"),
    "tensorrt-int8": (["--set", "triton.tensorrt.enabled=true", "--set", "triton.tensorrt.precision=INT8",
                       "--set", f"triton.tensorrt.workspaceBytes={WORKSPACE}", "--set",
                       "triton.gpu.instancesPerGpu=2"], KIND_GPU, 2, "INT8"),
    # TensorRT is a GPU accelerator: on CPU the values switch it off.
    "tensorrt-on-cpu": (["--set", "triton.tensorrt.enabled=true", "--set", "triton.gpu.enabled=false"],
                        KIND_CPU, 1, None),
}


def parse(text: str, where: str) -> model_config_pb2.ModelConfig:
    try:
        return text_format.Parse(text, ModelConfig())
    except text_format.ParseError as exc:
        pytest.fail(f"{where} is not a Triton model config: {exc}\n{text}", pytrace=False)


def init_container_script(docs) -> str:
    pod = one(docs, "Deployment", f"{FULLNAME}-triton")["spec"]["template"]["spec"]
    (init,) = (c for c in pod["initContainers"] if c["name"] == "model-config")
    assert init["command"] == ["/bin/sh", "-c"]
    return init["args"][0]


def run_init_container(docs, folder: Path, variant: str | None = None) -> Path:
    """The init container's script, on the committed repository, with its mounts as local folders; the
    baked repository serves `variant` (default: the trunk the chart asks for)."""
    fragment = one(docs, "ConfigMap", f"{FULLNAME}-triton-model-settings")["data"]["model-settings.pbtxt"]
    (folder / "fragment").mkdir()
    (folder / "fragment" / "model-settings.pbtxt").write_text(fragment)
    (folder / "models").mkdir()
    for config in MODELS.glob("*/config.pbtxt"):  # configs only: the weights do not matter here
        (folder / "models" / config.parent.name).mkdir()
        shutil.copy(config, folder / "models" / config.parent.name / "config.pbtxt")
    # The trunk's two exports, as markers: the int8 one it serves on CPU and the fp32 one for GPUs.
    for version, marker in (("1", "int8"), ("fp32", "fp32")):
        (folder / "models" / "trunk" / version).mkdir(parents=True, exist_ok=True)
        (folder / "models" / "trunk" / version / "model.onnx").write_text(marker)
    script = init_container_script(docs)
    if variant is None:
        variant = re.search(r"triton.trunk resolves to (\w+)", script).group(1)
    (folder / "models" / "trunk" / "variant").write_text(variant)
    (folder / "repository").mkdir()
    for mount in ("/models/", "/repository/", "/fragment/"):
        script = script.replace(mount, f"{folder}{mount}")
    subprocess.run(["/bin/sh", "-c", script], check=True, timeout=30)
    return folder / "repository"


@pytest.mark.parametrize("setting", SETTINGS)
def test_every_model_config_with_the_chart_settings_parses(setting, tmp_path):
    args, kind, count, precision = SETTINGS[setting]
    docs = render(*args)
    repository = run_init_container(docs, tmp_path)
    onnx_models = ensembles = 0
    for model in sorted(p for p in repository.iterdir() if p.is_dir()):
        base = parse((model / "config.pbtxt").read_text(), f"{model.name}/config.pbtxt")
        helm = model / "configs" / "helm.pbtxt"
        if base.platform == "ensemble":
            # Ensembles are scheduled by Triton itself: no instances, no settings file.
            assert not helm.exists(), f"{model.name}: an ensemble got {helm.name}"
            ensembles += 1
            continue
        assert base.backend == "onnxruntime" and not base.instance_group
        onnx_models += 1
        assert helm.is_file(), f"{model.name}: no configs/helm.pbtxt, Triton would fail with --model-config-name=helm"
        config = parse(helm.read_text(), f"{setting}: {model.name}/configs/helm.pbtxt")
        (group,) = config.instance_group
        assert (group.kind, group.count) == (kind, count), model.name
        accelerators = config.optimization.execution_accelerators
        if precision is None:
            assert not config.HasField("optimization"), model.name
        else:
            (tensorrt,) = accelerators.gpu_execution_accelerator
            assert tensorrt.name == "tensorrt" and not accelerators.cpu_execution_accelerator
            assert tensorrt.parameters["precision_mode"] == precision
            assert int(tensorrt.parameters["max_workspace_size_bytes"]) > 0
            assert tensorrt.parameters["trt_engine_cache_enable"] == "1"
            assert tensorrt.parameters["trt_engine_cache_path"] in trt_cache_mounts(docs)
        # The committed settings are kept: the fragment only adds.
        config.ClearField("instance_group")
        config.ClearField("optimization")
        assert config == base, model.name
    assert ensembles == len(io.ENSEMBLE_NAMES) and onnx_models == len(list(MODELS.glob("*/config.pbtxt"))) - ensembles


@pytest.mark.parametrize(("args", "served"), [
    ([], "fp32"), (["--set", "triton.gpu.enabled=false"], "int8"),
    (["--set", "triton.trunkPrecision=int8"], "int8"), (["--set", "triton.gpu.enabled=false", "--set",
                                                         "triton.trunkPrecision=fp32"], "fp32"),
])
def test_the_trunk_precision_follows_the_device(args, served, tmp_path):
    repository = run_init_container(render(*args), tmp_path)
    assert (repository / "trunk" / "1" / "model.onnx").read_text() == served
    assert not (repository / "trunk" / "fp32").exists(), "Triton would see a second version folder"


def test_an_unknown_trunk_precision_is_refused():
    result = helm_template("--set", "triton.trunkPrecision=fp8")
    assert result.returncode != 0 and "trunkPrecision" in result.stderr


def trt_cache_mounts(docs) -> set[str]:
    pod = one(docs, "Deployment", f"{FULLNAME}-triton")["spec"]["template"]["spec"]
    (triton,) = (c for c in pod["containers"] if c["name"] == "triton")
    return {m["mountPath"] for m in triton["volumeMounts"] if m["name"] == "trt-cache"}


def test_the_workspace_size_is_rendered_as_an_exact_integer(tmp_path):
    args, *_ = SETTINGS["tensorrt-int8"]
    repository = run_init_container(render(*args), tmp_path)
    config = parse((repository / "trunk" / "configs" / "helm.pbtxt").read_text(), "trunk")
    (tensorrt,) = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert tensorrt.parameters["max_workspace_size_bytes"] == str(WORKSPACE)


@pytest.mark.parametrize(("broken", "message"), [
    ("instance_group [ { kind: KIND_TPU count: 1 } ]", "KIND_TPU"),
    ("instance_group [ { kind: KIND_GPU cout: 1 } ]", "cout"),
    ("instance_group [ { kind: KIND_GPU count: \"one\" } ]", "count"),
    ("dynamic_batching { max_queue_delay_microseconds: 1 }", "dynamic_batching"),  # set twice
])
def test_a_broken_fragment_fails_the_parse(broken, message):
    text = (MODELS / "trunk" / "config.pbtxt").read_text() + broken + "\n"
    with pytest.raises(text_format.ParseError, match=message):
        text_format.Parse(text, ModelConfig())


@pytest.mark.parametrize(("args", "trunk"), [([], "small"), (["--set", "triton.gpu.enabled=false"], "small"),
                                             (["--set", "triton.trunk=base"], "base"),
                                             (VARIANTS["gpu-base"], "base")])
def test_the_services_are_told_the_trunk_the_chart_asks_for(args, trunk, tmp_path):
    docs = render(*args)
    assert f"triton.trunk resolves to {trunk}" in init_container_script(docs)
    assert router_config_data(docs)["models"]["trunk"] == trunk


def test_an_image_of_the_other_trunk_size_is_refused(tmp_path):
    with pytest.raises(subprocess.CalledProcessError):
        run_init_container(render(), tmp_path, variant="base")


def test_an_unknown_trunk_is_refused():
    result = helm_template("--set", "triton.trunk=large")
    assert result.returncode != 0 and "/triton/trunk" in result.stderr
