"""Retries with exponential backoff and full jitter that honour ``Retry-After``."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, Field

from serving.client import CallFailed, TransientCallError

T = TypeVar("T")


class RetryPolicy(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    max_attempts: int = Field(default=5, ge=1)
    base_delay_s: float = Field(default=0.2, ge=0.0)
    max_delay_s: float = Field(default=10.0, ge=0.0)
    max_retry_after_s: float = Field(default=60.0, ge=0.0, description="cap on a server's Retry-After")

    def delay(self, attempt: int, error: TransientCallError, rand: Callable[[], float] = random.random) -> float:
        """Seconds to wait after failed ``attempt`` (1-based)."""
        backoff = rand() * min(self.max_delay_s, self.base_delay_s * 2 ** (attempt - 1))
        if error.retry_after_s is not None:
            return max(min(error.retry_after_s, self.max_retry_after_s), backoff)
        return backoff


async def call_with_retries(
    call: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    rand: Callable[[], float] = random.random,
    on_retry: Callable[[int, TransientCallError], None] | None = None,
) -> tuple[T, int]:
    """The call's result and the attempts it took. A raised ``CallFailed`` carries ``attempts``.

    ``on_retry(attempt, error)`` is told before each retry (for metrics and span events).
    """
    attempt = 0
    while True:
        attempt += 1
        try:
            return await call(), attempt
        except TransientCallError as err:
            err.attempts = attempt
            if attempt >= policy.max_attempts:
                raise
            if on_retry is not None:
                on_retry(attempt, err)
            await sleep(policy.delay(attempt, err, rand))
        except CallFailed as err:
            err.attempts = attempt
            raise
