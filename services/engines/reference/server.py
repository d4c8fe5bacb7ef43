"""The reference engine's gRPC service: `meshgate.v1.EngineService` over the generator.

Every answer is planned in full first (the generator package, pure and fast), then
either sent as one message or streamed piece by piece. Streams follow the
OpenAI chunk order the router forwards unchanged: a role-only delta, one delta
per piece (or tool-call fragments), a finish delta, then one usage-only chunk.
`id`, `created` and `model` stay empty; the router sets them.

Run alone with `python -m services.engines.reference.server`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, TypeVar

import grpc

from meshgate import errors
from meshgate.config import Config, load_config
from meshgate.grpcio import serve
from meshgate.logs import configure
from meshgate.v1 import common_pb2, engine_pb2, engine_pb2_grpc, inference_pb2
from services.engines.metrics import TOKENS, generating
from services.engines.reference import generator
from services.engines.reference.generator import ChatPlan, InvalidRequest, TextPlan, ToolCallPlan

log = logging.getLogger("meshgate.engine")

SERVICE_NAME: str = engine_pb2.DESCRIPTOR.services_by_name["EngineService"].full_name

_Chunk = inference_pb2.ChatCompletionChunk
_TextChunk = inference_pb2.CompletionChunk
_Request = TypeVar("_Request")
_Plan = TypeVar("_Plan")


# --------------------------------------------------------------- chunks ----
# Built with add()/attribute sets: about three times cheaper than nested kwargs,
# and this runs once per streamed token.


def _role_chunk() -> inference_pb2.ChatCompletionChunk:
    chunk = _Chunk()
    delta = chunk.choices.add().delta
    delta.role = "assistant"
    delta.content = ""
    return chunk


def _content_chunk(piece: str) -> inference_pb2.ChatCompletionChunk:
    chunk = _Chunk()
    chunk.choices.add().delta.content = piece
    return chunk


def _tool_start_chunk(call: ToolCallPlan) -> inference_pb2.ChatCompletionChunk:
    chunk = _Chunk()
    call_delta = chunk.choices.add().delta.tool_calls.add()
    call_delta.id = call.id
    call_delta.name = call.name
    call_delta.arguments = ""
    return chunk


def _tool_args_chunk(fragment: str) -> inference_pb2.ChatCompletionChunk:
    chunk = _Chunk()
    chunk.choices.add().delta.tool_calls.add().arguments = fragment
    return chunk


def _finish_chunk(finish_reason: str) -> inference_pb2.ChatCompletionChunk:
    chunk = _Chunk()
    choice = chunk.choices.add()
    choice.delta.SetInParent()
    choice.finish_reason = finish_reason
    return chunk


def _text_chunk(index: int, text: str, finish_reason: str = "") -> inference_pb2.CompletionChunk:
    chunk = _TextChunk()
    choice = chunk.choices.add()
    choice.index = index
    choice.text = text
    if finish_reason:
        choice.finish_reason = finish_reason
    return chunk


def _usage(prompt_tokens: int, completion_tokens: int) -> common_pb2.Usage:
    return common_pb2.Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)


def argument_fragments(pieces: Sequence[str], per_fragment: int = 4) -> list[str]:
    """Group argument tokens a few at a time, as OpenAI streams tool arguments."""
    return ["".join(pieces[i : i + per_fragment]) for i in range(0, len(pieces), per_fragment)]


# ------------------------------------------------------------- messages ----


def chat_completion(plan: ChatPlan) -> inference_pb2.ChatCompletion:
    """The non-streaming answer for a plan."""
    message = inference_pb2.AssistantMessage()
    if plan.tool_call is not None:
        call = plan.tool_call
        message.tool_calls.add(id=call.id, name=call.name, arguments=call.arguments)
    else:
        message.content = plan.content or ""
    return inference_pb2.ChatCompletion(
        choices=[
            inference_pb2.ChatChoice(index=0, message=message, finish_reason=plan.finish_reason)
        ],
        usage=_usage(plan.prompt_tokens, plan.completion_tokens),
    )


def completion(plan: TextPlan) -> inference_pb2.Completion:
    """The non-streaming legacy answer for a plan."""
    return inference_pb2.Completion(
        choices=[
            inference_pb2.CompletionChoice(
                index=c.index, text=c.text, finish_reason=c.finish_reason
            )
            for c in plan.choices
        ],
        usage=_usage(plan.prompt_tokens, plan.completion_tokens),
    )


# -------------------------------------------------------------- service ----


class ReferenceEngine(engine_pb2_grpc.EngineServiceServicer):
    """A deterministic fake LLM; `token_delay_ms` paces streams like a real decoder."""

    def __init__(self, token_delay_ms: float = 0.0) -> None:
        self.delay = max(token_delay_ms, 0.0) / 1000.0

    async def _plan(
        self,
        planner: Callable[[_Request], _Plan],
        request: _Request,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> _Plan:
        """Run a planner, turning InvalidRequest into an OpenAI 400."""
        try:
            return planner(request)
        except InvalidRequest as exc:
            await errors.invalid_request(exc.message, param=exc.param).abort(context)

    async def _decode_time(self, tokens: int) -> None:
        """A whole answer takes as long as its stream would, as with a real decoder."""
        if self.delay and tokens > 1:
            await asyncio.sleep(self.delay * (tokens - 1))

    async def GenerateChat(
        self,
        request: engine_pb2.GenerateChatRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> engine_pb2.GenerateChatResponse:
        plan = await self._plan(generator.plan_chat, request.request, context)
        await self._decode_time(plan.completion_tokens)
        TOKENS.inc(plan.completion_tokens)
        return engine_pb2.GenerateChatResponse(completion=chat_completion(plan))

    async def StreamChat(
        self,
        request: engine_pb2.StreamChatRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[inference_pb2.ChatCompletionChunk]:
        plan = await self._plan(generator.plan_chat, request.request, context)
        # The token delay goes between pieces, never before the first one. Cancellation
        # arrives as CancelledError at a yield or sleep and simply ends the generator.
        delay = self.delay
        call = plan.tool_call
        with generating():
            yield _role_chunk()
            if call is not None:
                yield _tool_start_chunk(call)
                for i, fragment in enumerate(argument_fragments(call.argument_pieces)):
                    if delay and i:
                        await asyncio.sleep(delay)
                    yield _tool_args_chunk(fragment)
                TOKENS.inc(plan.completion_tokens)
            else:
                for i, piece in enumerate(plan.pieces):
                    if delay and i:
                        await asyncio.sleep(delay)
                    TOKENS.inc()
                    yield _content_chunk(piece)
            yield _finish_chunk(plan.finish_reason)
            yield _Chunk(usage=_usage(plan.prompt_tokens, plan.completion_tokens))

    async def GenerateText(
        self,
        request: engine_pb2.GenerateTextRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> engine_pb2.GenerateTextResponse:
        plan = await self._plan(generator.plan_text, request.request, context)
        await self._decode_time(max((c.completion_tokens for c in plan.choices), default=0))
        TOKENS.inc(plan.completion_tokens)
        return engine_pb2.GenerateTextResponse(completion=completion(plan))

    async def StreamText(
        self,
        request: engine_pb2.StreamTextRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[inference_pb2.CompletionChunk]:
        """Choices advance together, one piece each per step, like a batched decoder."""
        plan = await self._plan(generator.plan_text, request.request, context)
        steps = max((len(c.pieces) for c in plan.choices), default=0)
        with generating():
            for step in range(steps + 1):
                if step and self.delay:
                    await asyncio.sleep(self.delay)
                for choice in plan.choices:
                    if step < len(choice.pieces):
                        TOKENS.inc()
                        yield _text_chunk(choice.index, choice.pieces[step])
                    elif step == len(choice.pieces):
                        yield _text_chunk(choice.index, "", choice.finish_reason)
            yield _TextChunk(usage=_usage(plan.prompt_tokens, plan.completion_tokens))

    async def Embed(
        self,
        request: engine_pb2.EmbedRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> engine_pb2.EmbedResponse:
        plan = await self._plan(generator.embed, request.request, context)
        embeddings = inference_pb2.EmbeddingList(usage=_usage(plan.prompt_tokens, 0))
        for index, vector in enumerate(plan.vectors):
            embeddings.data.add(index=index, vector_f32le=vector)
        return engine_pb2.EmbedResponse(embeddings=embeddings)


async def add_to_server(server: grpc.aio.Server, config: Config) -> list[str]:
    """Register the engine on a server; returns the service names to publish."""
    generator.warm_up()
    engine = ReferenceEngine(config.services.engine.token_delay_ms)
    engine_pb2_grpc.add_EngineServiceServicer_to_server(engine, server)
    return [SERVICE_NAME]


async def run(config: Config) -> None:
    """Serve the reference engine until SIGTERM, then drain."""
    cfg = config.services.engine

    async def setup(server: grpc.aio.Server) -> list[str]:
        return await add_to_server(server, config)

    await serve("engine", cfg, setup, tls=config.tls)


def main() -> None:
    config = load_config()
    configure("engine", config.logging.level, config.logging.format)
    try:
        import uvloop
    except ImportError:
        asyncio.run(run(config))
    else:
        uvloop.run(run(config))


if __name__ == "__main__":
    main()
