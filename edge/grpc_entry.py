"""The gRPC front door for internal consumers: the edge's pipeline, typed in and typed out.

It serves `meshgate.gateway.v1.GatewayService` on `edge.grpc_port`, in the
edge's own process and event loop, and reuses the HTTP path's hops from
edge/pipeline.py: the key (`authorization` metadata) and the request go
through the same auth, validation (the typed request is checked as the JSON
body it stands for), quota and routing. Errors are the matching gRPC status
with the OpenAI error in the status details.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from math import inf
from typing import Any, Generic, NamedTuple

import grpc
import orjson
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from edge import metering, pipeline
from edge.headers import new_request_id
from edge.mesh import Mesh, Message, Method, rpc
from edge.metering import Meter
from meshgate import billing, logs
from meshgate import openai_wire as wire
from meshgate.config import TlsConfig
from meshgate.deadline import of_call
from meshgate.errors import ApiError, from_rpc_error
from meshgate.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from meshgate.grpcio import SERVER_OPTIONS, Context, listen_on
from meshgate.v1 import common_pb2, inference_pb2, router_pb2, usage_pb2, validation_pb2

SERVICE_NAME = gateway_pb2.DESCRIPTOR.services_by_name["GatewayService"].full_name


def _call_facts(context: Context, mesh: Mesh) -> tuple[str, str, float]:
    """The key, the request id and the deadline of this call."""
    authorization, rid = "", ""
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            authorization = str(value)
        elif key == "x-request-id":
            rid = str(value)[:128]
    rid = rid or new_request_id()
    logs.request_id.set(rid)
    return authorization, rid, of_call(context, mesh.request_timeout)


class _Admitted(NamedTuple, Generic[pipeline.V]):
    """A typed request past auth, validation and quota, ready for the router."""

    rid: str
    deadline: float
    validated: pipeline.V
    meter: Meter
    routed: common_pb2.RequestContext


class Gateway(gateway_pb2_grpc.GatewayServiceServicer):
    def __init__(self, mesh: Mesh) -> None:
        self._mesh = mesh

    async def _admit(
        self,
        context: Context,
        validate: Method,
        body: Message,
        max_tokens: int | None,
        answer: type[pipeline.V],
        endpoint: usage_pb2.Endpoint,
        stream: bool = False,
    ) -> _Admitted[pipeline.V]:
        """The HTTP path's hops for one typed request: auth with validation, then quota."""
        mesh = self._mesh
        authorization, rid, deadline = _call_facts(context, mesh)
        principal, validated = await pipeline.authenticate_and_validate(
            mesh, authorization, rid, deadline, validate, body
        )
        assert isinstance(validated, answer)
        asked = validated.request
        record = metering.start_record(rid, principal, asked.model, endpoint, stream)
        _, meter = await pipeline.admit(
            mesh, rid, principal, validated, max_tokens, deadline, record
        )
        routed = common_pb2.RequestContext(
            request_id=rid, principal=principal, prompt_tokens=validated.prompt_tokens
        )
        return _Admitted(rid, deadline, validated, meter, routed)

    async def _admit_chat(
        self, request: inference_pb2.ChatCompletionRequest, context: Context, *, stream: bool
    ) -> _Admitted[validation_pb2.ValidateChatCompletionResponse]:
        """The typed request is checked as the JSON body it stands for."""
        body = wire.chat_body(request, request.model, stream=stream)
        if not stream:
            body.pop("stream", None)
        return await self._admit(
            context,
            self._mesh.validation.ValidateChatCompletion,
            validation_pb2.ValidateChatCompletionRequest(body=orjson.dumps(body)),
            request.max_tokens if request.HasField("max_tokens") else None,
            validation_pb2.ValidateChatCompletionResponse,
            metering.CHAT,
            stream,
        )

    async def CreateChatCompletion(
        self, request: gateway_pb2.CreateChatCompletionRequest, context: Context
    ) -> gateway_pb2.CreateChatCompletionResponse:
        mesh = self._mesh
        try:
            rid, deadline, validated, meter, routed = await self._admit_chat(
                request.request, context, stream=False
            )
            message = router_pb2.CreateChatCompletionRequest(
                request=validated.request, context=routed
            )
            try:
                response = await rpc(
                    mesh.router.CreateChatCompletion, message, "router", rid, deadline, cap=inf
                )
            except ApiError as exc:
                meter.finish(common_pb2.Usage(), error=exc)
                raise
            except BaseException:
                meter.cancel(common_pb2.Usage())
                raise
        except ApiError as exc:
            await exc.abort(context)
        meter.served_by(response.completion.model)
        meter.finish(response.completion.usage)
        return gateway_pb2.CreateChatCompletionResponse(completion=response.completion)

    async def StreamChatCompletion(
        self, request: gateway_pb2.StreamChatCompletionRequest, context: Context
    ) -> AsyncIterator[gateway_pb2.StreamChatCompletionResponse]:
        mesh = self._mesh
        try:
            rid, deadline, validated, meter, routed = await self._admit_chat(
                request.request, context, stream=True
            )
        except ApiError as exc:
            await exc.abort(context)
        message = router_pb2.StreamChatCompletionRequest(request=validated.request, context=routed)
        try:
            call, chunk = await pipeline.first_chunk(
                mesh.router.StreamChatCompletion, message, rid, deadline
            )
        except ApiError as exc:
            meter.finish(common_pb2.Usage(), error=exc)
            await exc.abort(context)
        except BaseException:
            meter.cancel(common_pb2.Usage())
            raise
        meter.first_token()
        meter.served_by(chunk.model)
        tally = billing.Tally()
        error: ApiError | None = None
        ended = False
        try:
            while chunk is not grpc.aio.EOF:
                tally.add(chunk)
                yield gateway_pb2.StreamChatCompletionResponse(chunk=chunk)
                chunk = await call.read()
            ended = True
        except grpc.aio.AioRpcError as exc:
            error, ended = from_rpc_error(exc, "router"), True
            await error.abort(context)
        finally:
            if not call.done():
                call.cancel()
            billed = tally.billed(validated.prompt_tokens)
            if ended:
                meter.finish(billed, error=error, status=200)
            else:
                meter.cancel(billed)

    async def CreateEmbedding(
        self, request: gateway_pb2.CreateEmbeddingRequest, context: Context
    ) -> gateway_pb2.CreateEmbeddingResponse:
        mesh = self._mesh
        r = request.request
        body: dict[str, Any] = {"model": r.model, "input": list(r.input)}
        if r.HasField("dimensions"):
            body["dimensions"] = r.dimensions
        if r.user:
            body["user"] = r.user
        try:
            rid, deadline, validated, meter, routed = await self._admit(
                context,
                mesh.validation.ValidateEmbedding,
                validation_pb2.ValidateEmbeddingRequest(body=orjson.dumps(body)),
                0,
                validation_pb2.ValidateEmbeddingResponse,
                metering.EMBEDDINGS,
            )
            message = router_pb2.CreateEmbeddingRequest(request=validated.request, context=routed)
            try:
                response = await rpc(
                    mesh.router.CreateEmbedding, message, "router", rid, deadline, cap=inf
                )
            except ApiError as exc:
                meter.finish(common_pb2.Usage(), error=exc)
                raise
            except BaseException:
                meter.cancel(common_pb2.Usage())
                raise
        except ApiError as exc:
            await exc.abort(context)
        meter.served_by(response.embeddings.model)
        meter.finish(response.embeddings.usage)
        return gateway_pb2.CreateEmbeddingResponse(embeddings=response.embeddings)


async def start(mesh: Mesh, host: str, port: int, tls: TlsConfig) -> grpc.aio.Server:
    """The gateway server, with health and reflection like every meshgate gRPC service."""
    server = grpc.aio.server(options=SERVER_OPTIONS)
    gateway_pb2_grpc.add_GatewayServiceServicer_to_server(Gateway(mesh), server)
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    names: Sequence[str] = [
        SERVICE_NAME,
        health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        reflection.SERVICE_NAME,
    ]
    reflection.enable_server_reflection(names, server)
    listen_on(server, f"{host}:{port}", tls)
    await server.start()
    for service in ("", SERVICE_NAME):
        await health.set(service, health_pb2.HealthCheckResponse.SERVING)
    return server
