"""The OpenAI chat client (what the transformer relays through) against the real generation predictor."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from serving.client import PermanentCallError, TransientCallError
from serving.launch import PredictorProcess, free_port
from serving.openai_client import OpenAIClient
from serving.retry import RetryPolicy, call_with_retries

pytestmark = pytest.mark.slow

CHAT = {"model": "smol", "messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 8,
        "temperature": 0, "stream_options": {"include_usage": True}}


@pytest.fixture
def spans() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


async def test_a_whole_chat_and_a_stream_each_make_one_client_span(
    generate_server: PredictorProcess, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = spans
    client = OpenAIClient(generate_server.url, 60, provider.get_tracer("test"))
    try:
        whole = await client.chat(CHAT)
        stream = await client.open_chat(CHAT)
        try:
            chunks = [chunk async for chunk in stream.chunks()]
        finally:
            await stream.aclose()
    finally:
        await client.close()
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert whole["choices"][0]["message"]["content"] == text  # greedy: the same words either way
    assert chunks[-1]["usage"]["completion_tokens"] == whole["usage"]["completion_tokens"]
    calls = exporter.get_finished_spans()
    assert [s.name for s in calls] == ["POST /openai/v1/chat/completions"] * 2
    for span in calls:
        assert span.kind == SpanKind.CLIENT and span.attributes["http.response.status_code"] == 200
        assert span.attributes["gen_ai.request.model"] == "smol"
        assert span.attributes["gen_ai.usage.output_tokens"] == whole["usage"]["completion_tokens"]


async def test_a_refused_request_fails_before_the_stream_opens(
    generate_server: PredictorProcess, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = spans
    client = OpenAIClient(generate_server.url, 60, provider.get_tracer("test"))
    try:
        with pytest.raises(PermanentCallError, match="predictor answered 404") as refused:
            await client.open_chat({**CHAT, "model": "nope"})
    finally:
        await client.close()
    assert refused.value.status == 404
    [span] = exporter.get_finished_spans()
    assert span.status.status_code == StatusCode.ERROR and span.attributes["error.type"] == "404"


@asynccontextmanager
async def forwarder(port: int, target_port: int) -> AsyncIterator[None]:
    """A TCP relay on ``port`` to the predictor: a predictor that comes up after the first attempt."""

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    async def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", target_port)
        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer), return_exceptions=True)

    server = await asyncio.start_server(connected, "127.0.0.1", port)
    try:
        yield
    finally:
        server.close()


async def test_a_connect_failure_before_the_first_byte_is_retried(generate_server: PredictorProcess) -> None:
    port = free_port()
    client = OpenAIClient(f"http://127.0.0.1:{port}", 60)
    relays = []

    async def sleep(_: float) -> None:  # between the attempts, the predictor becomes reachable
        relay = forwarder(port, generate_server.http_port)
        await relay.__aenter__()
        relays.append(relay)

    try:
        stream, attempts = await call_with_retries(lambda: client.open_chat(CHAT), RetryPolicy(max_attempts=2),
                                                   sleep=sleep)
        try:
            chunks = [chunk async for chunk in stream.chunks()]
        finally:
            await stream.aclose()
        await client.close()
    finally:
        for relay in relays:
            await relay.__aexit__(None, None, None)
    assert attempts == 2 and len(relays) == 1
    assert chunks[-1]["usage"]["completion_tokens"] > 0


async def test_an_unreachable_predictor_is_transient() -> None:
    client = OpenAIClient(f"http://127.0.0.1:{free_port()}", 2)
    try:
        with pytest.raises(TransientCallError) as down:
            await client.open_chat(CHAT)
        with pytest.raises(TransientCallError):
            await client.chat(CHAT)
    finally:
        await client.close()
    assert down.value.status == "unreachable"
