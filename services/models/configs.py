"""config.pbtxt text for every model, generated from the tensor constants in services.common.model_io."""

from __future__ import annotations

from services.common import model_io as io
from services.common.model_io import MAX_BATCH_SIZE, ModelSpec, TensorSpec

BACKEND = "onnxruntime"
# Short wait: the latency target is ~10 ms per request; batching mostly helps under concurrent load.
MAX_QUEUE_DELAY_US = 500
# The shared trunk does not wait for a batch to fill: the decision, guard and cache calls for one request
# arrive a few ms apart, and locally the first one's rows are kept (ROW_CACHE_ROWS) to answer the others,
# so a batching window would only add its length to every call. (This is config.pbtxt, for the NGC image's
# native backend, which has no row cache: under load, requests that arrive while the trunk computes are
# batched, and a GPU computes a batch's duplicate rows at no visible cost. The local config has no batcher.)
TRUNK_QUEUE_DELAY_US = 0
# Rows whose outputs the local backend keeps: at 256 tokens a row's outputs take ~17 KB (mostly the PII
# head's per-token probabilities), so 1,024 rows cost at most ~17 MB, and hold the last second or more of
# traffic even under load.
ROW_CACHE_ROWS = 1024
# Work whose caller has surely given up is dropped instead of computed: without a queue policy an
# overload leaves minutes of stale requests in the queue (seen in the benchmarks). Clients pass their
# own timeout per request (allow_timeout_override); this default covers the rest.
QUEUE_TIMEOUT_US = 2_000_000
MAX_QUEUE_SIZE = 256
# The local tritonserver reads <model>/configs/local.pbtxt (`--model-config-name=local`): config.pbtxt plus
# one CPU instance per model. Triton's default is two, and two trunk instances would compute a row
# concurrently instead of the second answering from the first's row cache (and oversubscribe two cores
# with two intra-op threads each). config.pbtxt stays generic; the Helm chart adds its own settings the same
# way (configs/helm.pbtxt).
LOCAL_CONFIG_NAME = "local"
LOCAL_SETTINGS = "instance_group [ { count: 1 kind: KIND_CPU } ]\n"


def _tensor(kind: str, spec: TensorSpec) -> str:
    dims = ", ".join(str(d) for d in spec.dims)
    return f"{kind} {{\n  name: \"{spec.name}\"\n  data_type: {spec.data_type}\n  dims: [ {dims} ]\n}}\n"


def _io(spec: ModelSpec) -> str:
    return "".join(_tensor("input", t) for t in spec.inputs) + "".join(_tensor("output", t) for t in spec.outputs)


def onnx_model_config(spec: ModelSpec, name: str | None = None, queue_delay_us: int = MAX_QUEUE_DELAY_US,
                      parameters: dict[str, str] | None = None, batching: bool = True) -> str:
    """A generic ONNX model: no instance_group or accelerator, so the deployment decides (see README)."""
    params = "".join(
        f'parameters {{\n  key: "{key}"\n  value: {{ string_value: "{value}" }}\n}}\n'
        for key, value in (parameters or {}).items()
    )
    head = f'name: "{name or spec.name}"\nbackend: "{BACKEND}"\nmax_batch_size: {MAX_BATCH_SIZE}\n' + _io(spec) + params
    if not batching:
        return head
    return (
        head
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


def ensemble_config(spec: ModelSpec) -> str:
    """One step: the trunk, of whose outputs the ensemble keeps its own under the ensemble's output name."""
    (output,) = spec.outputs
    return _trunk_ensemble(spec, {io.TRUNK_OUTPUTS[spec.name]: output.name})


def heads_ensemble_config() -> str:
    """trunk_heads: one step, the trunk, every output passed on under its own name (the caller picks)."""
    return _trunk_ensemble(io.TRUNK_HEADS_SPEC, {o.name: o.name for o in io.TRUNK_SPEC.outputs})


def _trunk_ensemble(spec: ModelSpec, outputs: dict[str, str]) -> str:
    step = (
        "  step {\n"
        f'    model_name: "{io.TRUNK}"\n'
        "    model_version: -1\n"
        f'    input_map {{ key: "{io.INPUT_IDS}" value: "{io.INPUT_IDS}" }}\n'
        f'    input_map {{ key: "{io.ATTENTION_MASK}" value: "{io.ATTENTION_MASK}" }}\n'
        + "".join(f'    output_map {{ key: "{key}" value: "{value}" }}\n' for key, value in outputs.items())
        + "  }\n"
    )
    return (
        f'name: "{spec.name}"\n'
        'platform: "ensemble"\n'
        f"max_batch_size: {MAX_BATCH_SIZE}\n"
        + _io(spec)
        + "ensemble_scheduling {\n"
        + step
        + "}\n"
    )


def _trunk_config(batching: bool = True) -> str:
    return onnx_model_config(io.TRUNK_SPEC, queue_delay_us=TRUNK_QUEUE_DELAY_US,
                             parameters={"row_cache_rows": str(ROW_CACHE_ROWS)}, batching=batching)


def repository_configs() -> dict[str, str]:
    """Model name -> config.pbtxt text for the whole repository."""
    configs = {io.TRUNK: _trunk_config()}
    for spec in io.ENSEMBLE_SPECS:
        configs[spec.name] = ensemble_config(spec)
    configs[io.TRUNK_HEADS] = heads_ensemble_config()
    return configs


def local_configs() -> dict[str, str]:
    """Model name -> configs/local.pbtxt text, for every model that is not an ensemble.

    The local trunk has no dynamic batcher: with one instance, Triton 2.51's batcher (the nvidia-pytriton
    wheel's) now and then waited 500 ms for an instance that was already free (seen in the benchmarks and
    in a stress test at concurrency 8: requests queued 2 s and were rejected; with two instances, or
    without the batcher, never). The stand-in backend computes rows one at a time anyway, and the row cache
    needs the one instance; the front's admission control bounds what queues. config.pbtxt (the NGC image's
    native backend) keeps dynamic batching and its queue policy.
    """
    configs = {name: text for name, text in repository_configs().items() if 'platform: "ensemble"' not in text}
    configs[io.TRUNK] = _trunk_config(batching=False)
    return {name: text + LOCAL_SETTINGS for name, text in configs.items()}
