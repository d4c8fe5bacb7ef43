"""OpenAI-compatible HTTP engines: vLLM, SGLang, the llama.cpp server, Ollama, TGI, hosted APIs.

One pooled keep-alive client per replica. Streams always ask for usage.
Closing a stream (the client left, or the deadline passed) closes the HTTP
response, which is how these engines learn to stop generating.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import httpx
import orjson

from meshgate import errors, logs
from meshgate import openai_wire as wire
from meshgate.v1 import inference_pb2
from services.router.adapters.base import EngineUnavailable

T = TypeVar("T")

POOL = httpx.Limits(max_connections=512, max_keepalive_connections=128, keepalive_expiry=30)
JSON_HEADERS = {"content-type": "application/json", "accept": "application/json"}


class OpenAIHttpEngine:
    def __init__(
        self, url: str, model: str, *, api_key_env: str = "", native_dimensions: int = 0
    ) -> None:
        self.target = url.rstrip("/")
        self._model = model
        self._native_dimensions = native_dimensions
        headers = dict(JSON_HEADERS)
        api_key = os.environ.get(api_key_env, "") if api_key_env else ""
        if api_key:
            headers["authorization"] = f"Bearer {api_key}"
        self._client = httpx.AsyncClient(
            base_url=self.target, headers=headers, limits=POOL, timeout=None
        )

    # --------------------------------------------------------------- calls ----

    async def _post(
        self, path: str, body: dict[str, Any], timeout: float, parse: Callable[[Any], T]
    ) -> T:
        try:
            response = await self._client.post(
                path, content=orjson.dumps(body), timeout=timeout, headers=_request_headers()
            )
        except httpx.TimeoutException:
            raise errors.timeout() from None
        except httpx.HTTPError as exc:
            raise EngineUnavailable(f"{self.target}: {type(exc).__name__}") from None
        self._raise_for_status(response.status_code, response.content)
        try:
            return parse(orjson.loads(response.content))
        except (orjson.JSONDecodeError, TypeError, ValueError, AttributeError):
            raise EngineUnavailable(f"{self.target}: unreadable answer") from None

    async def _stream(
        self, path: str, body: dict[str, Any], timeout: float, parse: Callable[[Any], T]
    ) -> AsyncIterator[T]:
        request = self._client.build_request(
            "POST", path, content=orjson.dumps(body), timeout=timeout
        )
        try:
            response = await self._client.send(request, stream=True)
        except httpx.TimeoutException:
            raise errors.timeout() from None
        except httpx.HTTPError as exc:
            raise EngineUnavailable(f"{self.target}: {type(exc).__name__}") from None
        try:
            if response.status_code != 200:
                self._raise_for_status(response.status_code, await response.aread())
            async for data in _sse_data(response):
                if data == b"[DONE]":
                    return
                event = orjson.loads(data)
                if isinstance(event, dict) and event.get("error"):
                    raise EngineUnavailable(f"{self.target}: error event mid-stream")
                yield parse(event)
            raise EngineUnavailable(f"{self.target}: stream ended without [DONE]")
        except httpx.TimeoutException:
            raise errors.timeout() from None
        except (httpx.HTTPError, orjson.JSONDecodeError) as exc:
            raise EngineUnavailable(f"{self.target}: {type(exc).__name__}") from None
        finally:
            await response.aclose()  # tells the engine to stop when we stop early

    def _raise_for_status(self, status: int, content: bytes) -> None:
        if status < 400:
            return
        if status >= 500 or status in (408, 429):
            raise EngineUnavailable(
                f"{self.target}: HTTP {status}"
            )  # another replica may do better
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
            response = await self._client.get("/models", timeout=timeout)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def close(self) -> None:
        await self._client.aclose()


def _request_headers() -> dict[str, str]:
    """The request id travels on to the engine under a header of our own.

    Not as `x-request-id`: some engines validate that header's format (the
    llama.cpp server wants a UUID and answers 400 otherwise).
    """
    rid = logs.request_id.get()
    return {"x-meshgate-request-id": rid} if rid else {}


async def _sse_data(response: httpx.Response) -> AsyncIterator[bytes]:
    """The `data:` payloads of an SSE stream; multi-line data joined, comments skipped."""
    buffer = b""
    data: list[bytes] = []
    async for piece in response.aiter_bytes():
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
