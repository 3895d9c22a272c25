"""Our predictor client against real servers, and the retry policy with a fake sleep."""

from __future__ import annotations

import numpy as np
import pytest

from serving.client import PermanentCallError, TransientCallError, make_client
from serving.launch import PredictorProcess, free_port
from serving.retry import RetryPolicy, call_with_retries


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["v1", "v2", "grpc-v2"])
async def test_every_protocol_speaks_v1_bodies(embed_server: PredictorProcess, protocol: str) -> None:
    target = embed_server.grpc_target if protocol == "grpc-v2" else embed_server.url
    client = make_client(protocol, target)  # type: ignore[arg-type]
    try:
        response = await client.predict("minilm", {"instances": ["one text", "another text"]},
                                        {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"})
        with pytest.raises(PermanentCallError) as err:
            await client.predict("minilm", {"instances": [""]})
        assert "instances[0]" in str(err.value) or "inputs.text[0]" in str(err.value)
    finally:
        await client.close()
    vectors = np.array(response["predictions"])
    assert vectors.shape == (2, 384)


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["v1", "v2", "grpc-v2"])
async def test_generation_parameters_cross_every_protocol(generate_server: PredictorProcess, protocol: str) -> None:
    target = generate_server.grpc_target if protocol == "grpc-v2" else generate_server.url
    client = make_client(protocol, target)  # type: ignore[arg-type]
    body = {"instances": [{"prompt": "The capital of France is"}],
            "parameters": {"max_new_tokens": 4, "temperature": 0.0}}
    try:
        [prediction] = (await client.predict("smol", body))["predictions"]
    finally:
        await client.close()
    assert "Paris" in prediction["text"]


@pytest.mark.parametrize("protocol", ["v1", "v2", "grpc-v2"])
async def test_unreachable_predictor_is_transient(protocol: str) -> None:
    port = free_port()
    target = f"127.0.0.1:{port}" if protocol == "grpc-v2" else f"http://127.0.0.1:{port}"
    client = make_client(protocol, target, timeout_s=2)  # type: ignore[arg-type]
    try:
        with pytest.raises(TransientCallError):
            await client.predict("m", {"instances": ["x"]})
    finally:
        await client.close()


class Flaky:
    def __init__(self, failures: list[Exception]) -> None:
        self.failures = failures
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return "ok"


async def test_retries_back_off_and_honour_retry_after() -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    call = Flaky([TransientCallError("down"), TransientCallError("busy", retry_after_s=3), TransientCallError("x")])
    policy = RetryPolicy(max_attempts=5, base_delay_s=1, max_delay_s=8)
    assert await call_with_retries(call, policy, sleep=sleep, rand=lambda: 1.0) == ("ok", 4)
    assert slept == [1.0, 3.0, 4.0]


async def test_retries_stop_at_the_limit_and_count_attempts() -> None:
    async def sleep(_: float) -> None:
        return None

    call = Flaky([TransientCallError(f"down {i}") for i in range(10)])
    with pytest.raises(TransientCallError, match="down 2") as err:
        await call_with_retries(call, RetryPolicy(max_attempts=3), sleep=sleep)
    assert err.value.attempts == 3 and call.calls == 3


async def test_permanent_errors_are_not_retried() -> None:
    call = Flaky([PermanentCallError("instances[0]: bad", status=400)])
    with pytest.raises(PermanentCallError) as err:
        await call_with_retries(call, RetryPolicy())
    assert err.value.attempts == 1 and call.calls == 1


def test_retry_after_is_capped() -> None:
    policy = RetryPolicy(max_retry_after_s=5)
    assert policy.delay(1, TransientCallError("x", retry_after_s=3600), rand=lambda: 0.0) == 5
