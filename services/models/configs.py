"""config.pbtxt text for every model, generated from the tensor constants in services.common.model_io."""

from __future__ import annotations

from dataclasses import dataclass

from services.common import model_io as io
from services.common.model_io import MAX_BATCH_SIZE, ModelSpec, TensorSpec

BACKEND = "onnxruntime"
# Short wait: the latency target is ~10 ms per request; batching mostly helps under concurrent load.
MAX_QUEUE_DELAY_US = 500
# The shared trunk waits longer: the decision, guard and cache calls for one request arrive a few ms apart
# and must meet in one batch (identical rows are then computed once), else each costs a trunk pass.
TRUNK_QUEUE_DELAY_US = 4000
# Work whose caller has surely given up is dropped instead of computed: without a queue policy an
# overload leaves minutes of stale requests in the queue (seen in the benchmarks). Clients pass their
# own timeout per request (allow_timeout_override); this default covers the rest.
QUEUE_TIMEOUT_US = 2_000_000
MAX_QUEUE_SIZE = 256
# Hidden states flowing between ensemble steps.
_HIDDEN_TENSOR = "hidden"


@dataclass(frozen=True)
class EnsembleLayout:
    """Which encoder and head an ensemble chains."""

    ensemble: ModelSpec
    encoder: str
    head: ModelSpec


def _tensor(kind: str, spec: TensorSpec) -> str:
    dims = ", ".join(str(d) for d in spec.dims)
    return f"{kind} {{\n  name: \"{spec.name}\"\n  data_type: {spec.data_type}\n  dims: [ {dims} ]\n}}\n"


def _io(spec: ModelSpec) -> str:
    return "".join(_tensor("input", t) for t in spec.inputs) + "".join(_tensor("output", t) for t in spec.outputs)


def onnx_model_config(spec: ModelSpec, name: str | None = None, queue_delay_us: int = MAX_QUEUE_DELAY_US) -> str:
    """A generic ONNX model: no instance_group or accelerator, so the deployment decides (see README)."""
    return (
        f'name: "{name or spec.name}"\n'
        f'backend: "{BACKEND}"\n'
        f"max_batch_size: {MAX_BATCH_SIZE}\n"
        + _io(spec)
        + "dynamic_batching {\n"
        f"  max_queue_delay_microseconds: {queue_delay_us}\n"
        "  default_queue_policy {\n"
        "    timeout_action: REJECT\n"
        f"    default_timeout_microseconds: {QUEUE_TIMEOUT_US}\n"
        "    allow_timeout_override: true\n"
        f"    max_queue_size: {MAX_QUEUE_SIZE}\n"
        "  }\n"
        "}\n"
    )


def ensemble_config(layout: EnsembleLayout) -> str:
    spec, head = layout.ensemble, layout.head
    encoder_step = (
        "  step {\n"
        f'    model_name: "{layout.encoder}"\n'
        "    model_version: -1\n"
        f'    input_map {{ key: "{io.INPUT_IDS}" value: "{io.INPUT_IDS}" }}\n'
        f'    input_map {{ key: "{io.ATTENTION_MASK}" value: "{io.ATTENTION_MASK}" }}\n'
        f'    output_map {{ key: "{io.HIDDEN_STATES}" value: "{_HIDDEN_TENSOR}" }}\n'
        "  }\n"
    )
    head_inputs = "".join(
        f'    input_map {{ key: "{t.name}" value: "{_HIDDEN_TENSOR if t.name == io.HIDDEN_STATES else t.name}" }}\n'
        for t in head.inputs
    )
    head_outputs = "".join(f'    output_map {{ key: "{t.name}" value: "{t.name}" }}\n' for t in head.outputs)
    head_step = f'  step {{\n    model_name: "{head.name}"\n    model_version: -1\n{head_inputs}{head_outputs}  }}\n'
    return (
        f'name: "{spec.name}"\n'
        'platform: "ensemble"\n'
        f"max_batch_size: {MAX_BATCH_SIZE}\n"
        + _io(spec)
        + "ensemble_scheduling {\n"
        + encoder_step
        + head_step
        + "}\n"
    )


def ensemble_layouts() -> list[EnsembleLayout]:
    """Every ensemble: the shared trunk, then its head."""
    pairs = [
        (io.DOMAIN_CLASSIFIER_SPEC, io.DOMAIN_HEAD_SPEC),
        (io.JAILBREAK_CLASSIFIER_SPEC, io.JAILBREAK_HEAD_SPEC),
        (io.PII_TAGGER_SPEC, io.PII_HEAD_SPEC),
        (io.EMBEDDER_SPEC, io.POOL_NORMALIZE_SPEC),
        (io.SAFETY_CLASSIFIER_SPEC, io.SAFETY_HEAD_SPEC),
        (io.CACHE_PAIR_CLASSIFIER_SPEC, io.PAIR_HEAD_SPEC),
    ]
    return [EnsembleLayout(e, io.TRUNK, h) for e, h in pairs]


def repository_configs() -> dict[str, str]:
    """Model name -> config.pbtxt text for the whole repository."""
    configs = {
        spec.name: onnx_model_config(spec)
        for spec in (io.ENCODER_SPEC, io.POOL_NORMALIZE_SPEC, io.DOMAIN_HEAD_SPEC, io.JAILBREAK_HEAD_SPEC, io.PII_HEAD_SPEC,
                     io.SAFETY_HEAD_SPEC, io.PAIR_HEAD_SPEC)
    }
    configs[io.TRUNK] = onnx_model_config(io.ENCODER_SPEC, io.TRUNK, TRUNK_QUEUE_DELAY_US)
    for layout in ensemble_layouts():
        configs[layout.ensemble.name] = ensemble_config(layout)
    return configs
