"""OpenAI-compatible HTTP engines: vLLM, SGLang, the llama.cpp server, Ollama, TGI, hosted APIs.

One pool of keep-alive connections per replica (`http1`: 15-20 µs of client CPU
per call, where aiohttp cost 100-200 and httpx 550-900). Streams always ask for
usage. Closing a stream (the client left, or the deadline passed) closes the
HTTP connection, which is how these engines learn to stop generating. The
timeout of a call is the request's remaining deadline, for the whole exchange.
"""

from __future__ import annotations

import os
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import orjson

from meshgate import errors, logs
from meshgate import openai_wire as wire
from meshgate.v1 import inference_pb2
from services.router.adapters.base import EngineUnavailable
from services.router.adapters.openai_http import http1

T = TypeVar("T")

# Connections to one engine when its `max_concurrency` sets none. Not a limit anyone
# should meet (requests beyond it wait for a connection, unseen by the balancer): one
# open stream is one connection, and 2,000 streams to one engine are ordinary.
MAX_CONNECTIONS = 16_384
KEEPALIVE_S = 30.0
JSON_HEADERS = {"content-type": "application/json", "accept": "application/json"}


class OpenAIHttpEngine:
    def __init__(
        self,
        url: str,
        model: str,
        *,
        api_key_env: str = "",
        native_dimensions: int = 0,
        max_connections: int = 0,
    ) -> None:
        self.target = url.rstrip("/")
        self._model = model
        self._native_dimensions = native_dimensions
        headers = dict(JSON_HEADERS)
        api_key = os.environ.get(api_key_env, "").strip() if api_key_env else ""
        if api_key:
            headers["authorization"] = f"Bearer {api_key}"
        # The proxy is looked up once, not per request.
        self._pool = http1.Pool(
            http1.Target(self.target, _env_proxy(self.target)),
            headers,
            limit=max_connections or MAX_CONNECTIONS,
            keepalive_s=KEEPALIVE_S,
        )

    # --------------------------------------------------------------- calls ----

    async def _reach(self, exchange: Awaitable[T]) -> T:
        """The exchange, its failures below HTTP as the router's: the deadline, or a
        replica that cannot be reached (another may be)."""
        try:
            return await exchange
        except TimeoutError:
            raise errors.timeout() from None
        except http1.HttpError as exc:
            raise EngineUnavailable(f"{self.target}: {exc}", "unreachable") from None

    async def _post(
        self, path: str, body: dict[str, Any], timeout: float, parse: Callable[[Any], T]
    ) -> T:
        status, content = await self._reach(
            self._pool.fetch("POST", path, orjson.dumps(body), _request_headers(), timeout)
        )
        self._raise_for_status(status, content)
        try:
            return parse(orjson.loads(content))
        except (orjson.JSONDecodeError, TypeError, ValueError, AttributeError):
            raise EngineUnavailable(f"{self.target}: unreadable answer") from None

    async def _stream(
        self, path: str, body: dict[str, Any], timeout: float, parse: Callable[[Any], T]
    ) -> AsyncIterator[T]:
        connection = await self._reach(
            self._pool.send("POST", path, orjson.dumps(body), _request_headers(), timeout)
        )
        done = False
        try:
            if connection.status != 200:
                self._raise_for_status(connection.status, await connection.read())
            async for data in _sse_data(connection.pieces()):
                if data == b"[DONE]":
                    done = True
                    return
                event = orjson.loads(data)
                if isinstance(event, dict) and event.get("error"):
                    raise EngineUnavailable(f"{self.target}: error event mid-stream")
                yield parse(event)
            raise EngineUnavailable(f"{self.target}: stream ended without [DONE]")
        except TimeoutError:
            raise errors.timeout() from None
        except (http1.HttpError, orjson.JSONDecodeError) as exc:
            raise EngineUnavailable(f"{self.target}: {type(exc).__name__}") from None
        finally:
            if done or connection.complete:
                self._pool.finish(connection)  # read to the end: the connection is reused
            else:
                self._pool.discard(connection)  # stopped early: closing it stops the engine

    def _raise_for_status(self, status: int, content: bytes) -> None:
        if status < 400:
            return
        if status >= 500 or status in (408, 429):  # another replica (or model) may do better
            reason = {408: "timeout", 429: "rate_limited"}.get(status, "engine_error")
            raise EngineUnavailable(f"{self.target}: HTTP {status}", reason)
        try:
            body: Any = orjson.loads(content)
        except orjson.JSONDecodeError:
            body = content.decode(errors="replace")[:500]
        raise wire.engine_error(status, body, self.target)

    # ----------------------------------------------------------- interface ----

    async def chat(
        self, request: inference_pb2.ChatCompletionRequest, timeout: float
    ) -> inference_pb2.ChatCompletion:
        return await self._post(
            "/chat/completions",
            wire.chat_body(request, self._model, stream=False),
            timeout,
            wire.chat_completion,
        )

    def stream_chat(
        self, request: inference_pb2.ChatCompletionRequest, timeout: float
    ) -> AsyncIterator[inference_pb2.ChatCompletionChunk]:
        return self._stream(
            "/chat/completions",
            wire.chat_body(request, self._model, stream=True),
            timeout,
            wire.chat_chunk,
        )

    async def text(
        self, request: inference_pb2.CompletionRequest, timeout: float
    ) -> inference_pb2.Completion:
        return await self._post(
            "/completions",
            wire.text_body(request, self._model, stream=False),
            timeout,
            wire.completion,
        )

    def stream_text(
        self, request: inference_pb2.CompletionRequest, timeout: float
    ) -> AsyncIterator[inference_pb2.CompletionChunk]:
        return self._stream(
            "/completions",
            wire.text_body(request, self._model, stream=True),
            timeout,
            wire.completion_chunk,
        )

    async def embed(
        self, request: inference_pb2.EmbeddingRequest, timeout: float
    ) -> inference_pb2.EmbeddingList:
        body = wire.embedding_body(request, self._model, native_dimensions=self._native_dimensions)
        answer = await self._post("/embeddings", body, timeout, wire.embeddings)
        if len(answer.data) != len(request.input):
            raise EngineUnavailable(
                f"{self.target}: {len(answer.data)} vectors for {len(request.input)} inputs"
            )
        return answer

    async def check_health(self, timeout: float) -> bool:
        try:
            status, _ = await self._pool.fetch("GET", "/models", None, {}, timeout)
        except (TimeoutError, http1.HttpError):
            return False
        return status == 200

    async def close(self) -> None:
        await self._pool.close()


def _env_proxy(url: str) -> str | None:
    """HTTP(S)_PROXY for this engine unless NO_PROXY exempts it, for hosted APIs behind a proxy."""
    parts = urllib.parse.urlsplit(url)
    if urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    return urllib.request.getproxies_environment().get(parts.scheme)


def _request_headers() -> dict[str, str]:
    """The request id travels on to the engine under a header of our own.

    Not as `x-request-id`: some engines validate that header's format (the
    llama.cpp server wants a UUID and answers 400 otherwise).
    """
    rid = logs.request_id.get()
    return {"x-meshgate-request-id": rid} if rid else {}


async def _sse_data(pieces: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The `data:` payloads of an SSE stream; multi-line data joined, comments skipped."""
    buffer = b""
    data: list[bytes] = []
    async for piece in pieces:
        buffer += piece
        while True:
            end = buffer.find(b"\n")
            if end < 0:
                break
            line, buffer = buffer[:end].rstrip(b"\r"), buffer[end + 1 :]
            if not line:
                if data:
                    yield b"\n".join(data)
                    data = []
            elif line.startswith(b"data:"):
                value = line[5:]
                data.append(value[1:] if value.startswith(b" ") else value)
    if data:
        yield b"\n".join(data)
