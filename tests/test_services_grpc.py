"""Each service is its own process that answers gRPC health checks and reflection,
and drains in-flight streams on SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from meshgate.config import load_config
from meshgate.v1 import engine_pb2, engine_pb2_grpc, inference_pb2
from tests.conftest import RunningMesh, meshgate_cmd, subprocess_env, write_config

FULL_NAMES = {
    "auth": "meshgate.v1.AuthService",
    "quota": "meshgate.v1.QuotaService",
    "validation": "meshgate.v1.ValidationService",
    "router": "meshgate.v1.RouterService",
    "engine": "meshgate.v1.EngineService",
    "ledger": "meshgate.v1.UsageService",
}


async def _health(target: str, service: str) -> int:
    async with grpc.aio.insecure_channel(target) as channel:
        response = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5
        )
        return int(response.status)


async def _reflected_services(target: str) -> set[str]:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        async for response in stub.ServerReflectionInfo(iter([request]), timeout=5):
            return {s.name for s in response.list_services_response.service}
    return set()


@pytest.mark.parametrize("name", sorted(FULL_NAMES))
def test_health_and_reflection(mesh: RunningMesh, name: str) -> None:
    target = mesh.config.services.get(name).dial_target()  # type: ignore[arg-type]
    serving = health_pb2.HealthCheckResponse.SERVING
    assert asyncio.run(_health(target, "")) == serving
    assert asyncio.run(_health(target, FULL_NAMES[name])) == serving
    services = asyncio.run(_reflected_services(target))
    assert {
        FULL_NAMES[name],
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= services


@pytest.fixture
def slow_engine(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A lone reference engine whose streams take a while: 40 ms per token."""
    path = write_config(tmp_path, {"services": {"engine": {"token_delay_ms": 40}}})
    config = load_config(path, environ={})
    proc = subprocess.Popen(
        meshgate_cmd("serve", "engine", "--config", str(path)),
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    target = config.services.engine.dial_target()
    deadline = time.monotonic() + 30
    while True:
        try:
            if asyncio.run(_health(target, "")) == health_pb2.HealthCheckResponse.SERVING:
                break
        except grpc.aio.AioRpcError:
            pass
        assert time.monotonic() < deadline and proc.poll() is None, "engine did not start"
        time.sleep(0.1)
    yield proc, target
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def test_sigterm_drains_an_in_flight_stream(
    slow_engine: tuple[subprocess.Popen[bytes], str],
) -> None:
    proc, target = slow_engine
    request = inference_pb2.ChatCompletionRequest(
        model="m",
        messages=[inference_pb2.ChatMessage(role="user", text="hi")],
        seed=1,
        max_tokens=20,
    )

    async def stream_while_terminating() -> tuple[list[inference_pb2.ChatCompletionChunk], int]:
        async with grpc.aio.insecure_channel(target) as channel:
            call = engine_pb2_grpc.EngineServiceStub(channel).StreamChat(
                engine_pb2.StreamChatRequest(request=request), timeout=30
            )
            chunks = [await call.read()]
            proc.send_signal(signal.SIGTERM)  # mid-stream: 20 tokens x 40 ms still to come
            # New calls during the drain are refused, while the open stream goes on.
            await asyncio.sleep(0.2)
            try:
                health = await _health(target, "")
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAVAILABLE
                health = health_pb2.HealthCheckResponse.NOT_SERVING
            while (chunk := await call.read()) is not grpc.aio.EOF:
                chunks.append(chunk)
            return chunks, health

    chunks, health_during_drain = asyncio.run(stream_while_terminating())
    assert health_during_drain == health_pb2.HealthCheckResponse.NOT_SERVING
    content = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert len(content) == 20
    assert chunks[-1].usage.completion_tokens == 20
    assert proc.wait(timeout=10) == 0
