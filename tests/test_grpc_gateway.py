"""Internal gRPC consumers: the same pipeline over meshgate.gateway.v1, errors as gRPC status
with the OpenAI error in the details, and the documented example client."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.rpc import status_pb2

from meshgate.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from meshgate.v1 import common_pb2, inference_pb2
from tests.conftest import ROOT, RunningMesh, free_ports, subprocess_env

PRO = "meshgate/reference-pro"


@pytest.fixture(scope="module")
def gateway(start_mesh: Any) -> Iterator[tuple[RunningMesh, gateway_pb2_grpc.GatewayServiceStub]]:
    (port,) = free_ports(1)
    mesh = start_mesh(edge={"grpc_port": port})
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield mesh, gateway_pb2_grpc.GatewayServiceStub(channel)
    assert mesh.stop() == 0


def _auth(mesh: RunningMesh, key: str | None = None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key or mesh.api_key}"),)


def _chat(model: str = PRO, **fields: Any) -> inference_pb2.ChatCompletionRequest:
    return inference_pb2.ChatCompletionRequest(
        model=model, messages=[inference_pb2.ChatMessage(role="user", text="hi")], **fields
    )


def _error(exc: grpc.RpcError) -> common_pb2.Error:
    for key, value in exc.trailing_metadata() or ():  # type: ignore[attr-defined]
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            error = common_pb2.Error()
            assert status.details[0].Unpack(error)
            return error
    raise AssertionError("no OpenAI error in the status details")


def test_chat_stream_and_embeddings(
    gateway: tuple[RunningMesh, gateway_pb2_grpc.GatewayServiceStub],
) -> None:
    mesh, stub = gateway
    reply = stub.CreateChatCompletion(
        gateway_pb2.CreateChatCompletionRequest(request=_chat(seed=3, max_tokens=6)),
        metadata=_auth(mesh),
        timeout=30,
    )
    assert reply.completion.id.startswith("chatcmpl-") and reply.completion.model == PRO
    assert reply.completion.usage.completion_tokens == 6
    chunks = list(
        stub.StreamChatCompletion(
            gateway_pb2.StreamChatCompletionRequest(request=_chat(seed=3, max_tokens=6)),
            metadata=_auth(mesh),
            timeout=30,
        )
    )
    text = "".join(c.chunk.choices[0].delta.content for c in chunks if c.chunk.choices)
    assert text == reply.completion.choices[0].message.content
    assert chunks[-1].chunk.usage.completion_tokens == 6
    vectors = stub.CreateEmbedding(
        gateway_pb2.CreateEmbeddingRequest(
            request=inference_pb2.EmbeddingRequest(model="bge-m3", input=["a", "b"])
        ),
        metadata=_auth(mesh),
        timeout=30,
    )
    assert [len(e.vector_f32le) for e in vectors.embeddings.data] == [4096, 4096]


@pytest.mark.parametrize(
    ("request_", "key", "code", "status", "type_", "param", "error_code"),
    [
        (_chat(), "sk-wrong-000000", grpc.StatusCode.UNAUTHENTICATED, 401, "authentication_error", None, "invalid_api_key"),
        (_chat(temperature=5), None, grpc.StatusCode.INVALID_ARGUMENT, 400, "invalid_request_error", "temperature", None),
        (_chat(model="nope"), None, grpc.StatusCode.NOT_FOUND, 404, "invalid_request_error", None, "model_not_found"),
        (_chat(model="meshgate/reference-mini", max_tokens=9000), None, grpc.StatusCode.INVALID_ARGUMENT, 400,
         "invalid_request_error", "messages", "context_length_exceeded"),
    ],
)  # fmt: skip
def test_errors_are_grpc_status_with_the_openai_error(
    gateway: tuple[RunningMesh, gateway_pb2_grpc.GatewayServiceStub],
    request_: inference_pb2.ChatCompletionRequest,
    key: str | None,
    code: grpc.StatusCode,
    status: int,
    type_: str,
    param: str | None,
    error_code: str | None,
) -> None:
    mesh, stub = gateway
    for call in (
        lambda: stub.CreateChatCompletion(gateway_pb2.CreateChatCompletionRequest(request=request_), metadata=_auth(mesh, key), timeout=30),
        lambda: list(stub.StreamChatCompletion(gateway_pb2.StreamChatCompletionRequest(request=request_), metadata=_auth(mesh, key), timeout=30)),
    ):  # fmt: skip
        with pytest.raises(grpc.RpcError) as info:
            call()
        assert info.value.code() == code  # type: ignore[attr-defined]
        error = _error(info.value)
        assert (error.http_status, error.type) == (status, type_)
        assert (error.param if error.HasField("param") else None) == param
        assert (error.code if error.HasField("code") else None) == error_code


def test_the_example_client(
    gateway: tuple[RunningMesh, gateway_pb2_grpc.GatewayServiceStub],
) -> None:
    mesh, _ = gateway
    target = f"127.0.0.1:{mesh.config.edge.grpc_port}"
    ok = subprocess.run(
        [sys.executable, "examples/grpc_client.py", "--target", target, "--key", mesh.api_key, "Tell me a story"],
        cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert "completion tokens]" in ok.stdout and len(ok.stdout) > 40
    refused = subprocess.run(
        [sys.executable, "examples/grpc_client.py", "--target", target, "--key", "sk-nope-00000000", "hi"],
        cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert refused.returncode == 1
    assert "UNAUTHENTICATED 401 authentication_error invalid_api_key" in refused.stderr
