from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from eventing.processing import REJECTED, UNAVAILABLE, Failure, Processor, Success
from predictors.client import PermanentCallError, TransientCallError
from predictors.retry import RetryPolicy


class FakePredictor:
    """Echoes instances upper-cased; ``bad`` instances are rejected; fails ``down`` times first."""

    def __init__(self, down: int = 0) -> None:
        self.calls: list[list[Any]] = []
        self.down = down
        self.headers: list[Mapping[str, str] | None] = []

    async def predict(self, model: str, body: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> dict:
        self.calls.append(list(body["instances"]))
        self.headers.append(headers)
        if self.down:
            self.down -= 1
            raise TransientCallError("connection refused", retry_after_s=0)
        if "bad" in body["instances"]:
            raise PermanentCallError("instances[1]: must not be empty", status=400)
        return {"predictions": [str(i).upper() for i in body["instances"]]}

    async def close(self) -> None:
        pass


FAST = RetryPolicy(max_attempts=3, base_delay_s=0, max_delay_s=0)


async def test_one_call_for_the_batch_and_each_request_gets_its_slice() -> None:
    predictor = FakePredictor()
    outcomes = await Processor(predictor, "m", FAST, 64).process(
        [{"instances": ["a", "b"]}, {"instances": ["c"]}], [{"traceparent": "t1"}, {}]
    )
    assert outcomes == [Success({"predictions": ["A", "B"]}, 1), Success({"predictions": ["C"]}, 1)]
    assert predictor.calls == [["a", "b", "c"]]
    assert predictor.headers == [{"traceparent": "t1"}]


async def test_a_rejected_request_fails_alone() -> None:
    predictor = FakePredictor()
    outcomes = await Processor(predictor, "m", FAST, 64).process(
        [{"instances": ["a"]}, {"instances": ["bad"]}, {"instances": ["c"]}]
    )
    assert outcomes[0] == Success({"predictions": ["A"]}, 1) and outcomes[2] == Success({"predictions": ["C"]}, 1)
    assert isinstance(outcomes[1], Failure) and outcomes[1].code == REJECTED and "instances[1]" in outcomes[1].message
    assert predictor.calls[0] == ["a", "bad", "c"] and sorted(predictor.calls[1:]) == [["a"], ["bad"], ["c"]]


async def test_transient_failures_are_retried_then_succeed() -> None:
    predictor = FakePredictor(down=2)
    [outcome] = await Processor(predictor, "m", FAST, 64).process([{"instances": ["a"]}])
    assert outcome == Success({"predictions": ["A"]}, 3)


async def test_exhausted_retries_fail_every_request_of_the_call_with_attempts() -> None:
    predictor = FakePredictor(down=10)
    outcomes = await Processor(predictor, "m", FAST, 64).process([{"instances": ["a"]}, {"instances": ["b"]}])
    assert outcomes == [Failure(UNAVAILABLE, "connection refused", 3)] * 2
