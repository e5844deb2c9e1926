"""One served call's Triton calls on identical rows share one trunk_heads request (the guard's checks)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from services.common import model_io as io
from services.common.config import TritonConfig
from services.common.triton import TritonModels, TritonTimeoutError, coalesce_calls

GUARD_HEADS = (io.JAILBREAK_CLASSIFIER, io.SAFETY_CLASSIFIER, io.PII_TAGGER)
ALL_THREE = ("jailbreak_probabilities", "pii_probabilities", "safety_probabilities")
from tests.unit.common.test_jailbreak_windows import WORDS, word_tokenizer

# Each head answers a value of its own, so a caller that got another head's output would see it.
HEAD_VALUES = {output.name: 0.1 * (k + 1) for k, output in enumerate(io.TRUNK_SPEC.outputs)}


class RequestRecorder(TritonModels):
    """TritonModels whose Triton requests are recorded (model, outputs asked) and answered per head."""

    def __init__(self, fail: Exception | None = None, delay_s: float = 0.0) -> None:
        super().__init__(TritonConfig(grpc_port=1), word_tokenizer())
        self.requests: list[tuple[str, tuple[str, ...]]] = []
        self.fail = fail
        self.delay_s = delay_s

    async def _request(self, spec: io.ModelSpec, input_ids: np.ndarray, mask: np.ndarray,
                       output_names: list[str]) -> dict[str, np.ndarray]:
        self.requests.append((spec.name, tuple(output_names)))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fail is not None:
            raise self.fail
        out = {}
        for name in output_names:
            tensor = spec.output(name)
            head = name if spec.name == io.TRUNK_HEADS else io.TRUNK_OUTPUTS[spec.name]
            dims = tuple(input_ids.shape[1] if d < 0 else d for d in tensor.dims)
            out[name] = np.full((input_ids.shape[0], *dims), HEAD_VALUES[head], dtype=np.float32)
        return out


async def guard_calls(models: TritonModels, text: str, group: bool):
    """What the guard's checks send for one prompt, concurrently (services.guard.check)."""
    if group:
        coalesce_calls(*GUARD_HEADS)
    return await asyncio.gather(models.jailbreak_scores([text]), models.jailbreak_window_scores([text]),
                                models.safety_probabilities([text]), models.tag_pii([text]))


async def test_a_short_prompts_three_heads_go_out_as_one_request() -> None:
    models = RequestRecorder()
    try:
        jailbreak, windows, safety, spans = await asyncio.create_task(guard_calls(models, "w1 w2 w3 w4", True))
    finally:
        await models.close()
    assert models.requests == [(io.TRUNK_HEADS, ALL_THREE)]
    # Every caller got its own head's output back.
    assert jailbreak[0] == pytest.approx(HEAD_VALUES["jailbreak_probabilities"])
    assert safety[0, 0] == pytest.approx(HEAD_VALUES["safety_probabilities"])
    assert [len(w) for w in windows] == [0] and len(spans) == 1


async def test_without_a_group_every_call_goes_alone() -> None:
    models = RequestRecorder()
    try:
        await asyncio.create_task(guard_calls(models, "w1 w2 w3 w4", False))
    finally:
        await models.close()
    assert sorted(name for name, _ in models.requests) == sorted(
        [io.JAILBREAK_CLASSIFIER, io.SAFETY_CLASSIFIER, io.PII_TAGGER])


async def test_different_rows_are_not_merged() -> None:
    """A long text: the whole-text rows and its windows differ, so only identical rows share a request."""
    models = RequestRecorder()
    long_text = " ".join(WORDS[:700])
    try:
        await asyncio.create_task(guard_calls(models, long_text, True))
    finally:
        await models.close()
    # The HEAD_TAIL row (jailbreak + safety) in one request; the four windows (jailbreak windows + PII) in
    # another, each asking for the three declared heads.
    assert models.requests == [(io.TRUNK_HEADS, ALL_THREE)] * 2


async def test_two_served_calls_never_share_a_request() -> None:
    models = RequestRecorder()
    try:
        await asyncio.gather(asyncio.create_task(guard_calls(models, "w1 w2 w3 w4", True)),
                             asyncio.create_task(guard_calls(models, "w1 w2 w3 w4", True)))
    finally:
        await models.close()
    assert len(models.requests) == 2


async def test_a_failed_shared_request_fails_every_caller() -> None:
    models = RequestRecorder(fail=TritonTimeoutError("trunk_heads: no answer"))
    try:
        results = await asyncio.create_task(_gathered(models))
    finally:
        await models.close()
    assert len(models.requests) == 1
    assert all(isinstance(r, TritonTimeoutError) for r in results)


async def _gathered(models: TritonModels):
    coalesce_calls(*GUARD_HEADS)
    return await asyncio.gather(models.jailbreak_scores(["w1 w2 w3"]), models.safety_probabilities(["w1 w2 w3"]),
                                return_exceptions=True)


@pytest.mark.parametrize("gives_up", ["first", "second"])
async def test_a_caller_that_gives_up_leaves_the_other_its_answer(gives_up: str) -> None:
    """Whichever caller is cancelled, the one who sent the request or the one who joined it, the other still
    gets its head from the one shared request."""
    models = RequestRecorder(delay_s=0.05)

    async def scenario():
        coalesce_calls(*GUARD_HEADS)
        callers = {"first": asyncio.ensure_future(models.jailbreak_scores(["w1 w2 w3"])),
                   "second": asyncio.ensure_future(models.safety_probabilities(["w1 w2 w3"]))}
        await asyncio.sleep(0.01)  # both joined, the shared request is in flight
        callers[gives_up].cancel()
        (kept,) = (future for name, future in callers.items() if name != gives_up)
        return await asyncio.wait_for(kept, timeout=2), callers[gives_up]

    try:
        answer, cancelled = await asyncio.create_task(scenario())
    finally:
        await models.close()
    assert cancelled.cancelled() and len(models.requests) == 1
    if gives_up == "second":
        assert answer[0] == pytest.approx(HEAD_VALUES["jailbreak_probabilities"])
    else:
        assert answer[0, 0] == pytest.approx(HEAD_VALUES["safety_probabilities"])


async def test_a_late_caller_reads_the_answer_already_there() -> None:
    """No waiting window: the first call goes out at once; a call for the same row after it ended reuses it."""
    models = RequestRecorder()

    async def scenario():
        coalesce_calls(*GUARD_HEADS)
        await models.jailbreak_scores(["w1 w2 w3"])
        return await models.safety_probabilities(["w1 w2 w3"])

    try:
        safety = await asyncio.create_task(scenario())
    finally:
        await models.close()
    assert len(models.requests) == 1
    assert safety[0, 0] == pytest.approx(HEAD_VALUES["safety_probabilities"])


def test_only_trunk_heads_can_be_declared() -> None:
    with pytest.raises(ValueError, match="not heads of the trunk"):
        coalesce_calls(io.TRUNK)
