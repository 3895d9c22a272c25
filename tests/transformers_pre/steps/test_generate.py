from __future__ import annotations

from types import SimpleNamespace

import pytest

from serving.retry import RetryPolicy
from tests.transformers_pre.steps.fakes import context
from transformers_pre.errors import BadRequest
from transformers_pre.steps.generate import Generate


def generate(stop: tuple[str, ...] = ()) -> Generate:
    return Generate(client=None, model="smol", protocol="v1", retry=RetryPolicy(), max_new_tokens=48,  # type: ignore[arg-type]
                    stop=stop)


def test_the_chains_stop_strings_are_a_default_the_caller_may_override() -> None:
    ctx = context("q?", [])
    assert generate(("\n\n",)).body(ctx)["parameters"] == {"max_new_tokens": 48, "temperature": 0.0, "stop": ["\n\n"]}
    assert "stop" not in generate().body(ctx)["parameters"]
    ctx.instance = ctx.instance.model_copy(update={"parameters": {"stop": ["."], "max_new_tokens": 8}})
    assert generate(("\n\n",)).body(ctx)["parameters"] == {"max_new_tokens": 8, "temperature": 0.0, "stop": ["."]}
    ctx.instance = ctx.instance.model_copy(update={"parameters": {"repetition": 1}})
    with pytest.raises(BadRequest, match="repetition"):
        generate().body(ctx)


def test_stop_options_are_checked() -> None:
    deps = SimpleNamespace(config=SimpleNamespace(predictor_model="m", predictor_protocol="v1", retry=RetryPolicy(),
                                                  max_new_tokens=64), predictor=None, metrics=None)
    assert Generate.create(deps).stop == () and Generate.create(deps, stop=["\n\n"]).stop == ("\n\n",)
    for bad in ("\n\n", [""], [1]):
        with pytest.raises(ValueError, match="stop"):
            Generate.create(deps, stop=bad)  # type: ignore[arg-type]
