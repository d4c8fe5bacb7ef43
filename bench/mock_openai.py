"""A fast mock of an OpenAI-compatible upstream, for `bench/run.py --upstream mock`.

It answers /v1/chat/completions (JSON, or server-sent events with a fixed
number of content chunks), /v1/embeddings (base64, 1024 dims) and /v1/models
with pre-rendered bytes, from a raw asyncio protocol on uvloop, so that it
costs as little CPU per request as an HTTP server in Python can. The point is
an upstream that is never the slowest part of a measurement: whatever latency
a gateway adds in front of it is the gateway's.

Run alone:
    python bench/mock_openai.py --port 9999
    mock-openai is up: http://127.0.0.1:9999/v1
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import signal
import socket
import sys
from array import array
from typing import cast

import orjson

CREATED = 1_700_000_000
# Embedding size served; a gateway catalog entry for the mock must declare the same.
DIMENSIONS = 1024
WORDS = ("The", " sea", " is", " wide", " and", " calm", " under", " a", " pale", " sky")


def _chunk(delta: dict[str, object], finish: str | None = None) -> bytes:
    event = {
        "id": "chatcmpl-mock",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": "mock",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    return b"data: " + orjson.dumps(event) + b"\n\n"


def _http(status: str, content_type: str, body: bytes) -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


def _http_chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


class Responses:
    """Every response body, rendered once at start-up."""

    def __init__(self, chunks: int, dimensions: int) -> None:
        pieces = [WORDS[i % len(WORDS)] for i in range(chunks)]
        usage = {"prompt_tokens": 14, "completion_tokens": chunks, "total_tokens": 14 + chunks}
        completion = {
            "id": "chatcmpl-mock",
            "object": "chat.completion",
            "created": CREATED,
            "model": "mock",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(pieces), "refusal": None},
                    "logprobs": None,
                    "finish_reason": "length",
                }
            ],
            "usage": usage,
        }
        self.chat = _http("200 OK", "application/json", orjson.dumps(completion))
        events = [_chunk({"role": "assistant", "content": "", "refusal": None})]
        events += [_chunk({"content": piece}) for piece in pieces]
        events.append(_chunk({}, "length"))
        events.append(b"data: [DONE]\n\n")
        self.stream_head = (
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
            b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
        )
        self.stream_events = [_http_chunk(event) for event in events]
        self.stream_end = b"0\r\n\r\n"
        self.stream_whole = self.stream_head + b"".join(self.stream_events) + self.stream_end
        raw = hashlib.shake_256(b"mock-embedding").digest(4 * dimensions)
        values = array("f", [(b - 127.5) / 1024.0 for b in raw[:dimensions]])
        vector = base64.b64encode(values.tobytes()).decode()
        embeddings = {
            "object": "list",
            "data": [{"object": "embedding", "index": 0, "embedding": vector}],
            "model": "mock-embed",
            "usage": {"prompt_tokens": 8, "total_tokens": 8},
        }
        self.embeddings = _http("200 OK", "application/json", orjson.dumps(embeddings))
        models = {
            "object": "list",
            "data": [
                {"id": m, "object": "model", "created": CREATED, "owned_by": "mock"}
                for m in ("mock", "mock-embed")
            ],
        }
        self.models = _http("200 OK", "application/json", orjson.dumps(models))
        error = {"error": {"message": "Not found.", "type": "invalid_request_error"}}
        self.not_found = _http("404 Not Found", "application/json", orjson.dumps(error))


class MockProtocol(asyncio.Protocol):
    """One client connection: parse requests in order, answer each from `Responses`."""

    def __init__(self, responses: Responses, token_delay: float) -> None:
        self.responses = responses
        self.token_delay = token_delay
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.busy = False  # a paced stream is being written; later requests wait for it
        self.pacer: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self._serve()

    def _serve(self) -> None:
        buf = self.buf
        while not self.busy:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end])
            lower = head.lower()
            at = lower.find(b"\r\ncontent-length:")
            length = 0
            if at >= 0:
                line_end = lower.find(b"\r\n", at + 2)
                length = int(lower[at + 17 : line_end if line_end >= 0 else None])
            if len(buf) < end + 4 + length:
                return
            body = bytes(buf[end + 4 : end + 4 + length])
            del buf[: end + 4 + length]
            self._respond(head[: head.find(b" HTTP/")], body)

    def _respond(self, request_line: bytes, body: bytes) -> None:
        assert self.transport is not None
        method, _, path = request_line.partition(b" ")
        path = path.split(b"?", 1)[0]
        r = self.responses
        if method == b"POST" and path.endswith(b"/chat/completions"):
            try:
                stream = bool(orjson.loads(body).get("stream"))
            except (orjson.JSONDecodeError, AttributeError):
                stream = False
            if not stream:
                self.transport.write(r.chat)
            elif not self.token_delay:
                self.transport.write(r.stream_whole)
            else:
                self.busy = True
                self.pacer = asyncio.ensure_future(self._paced_stream())
        elif method == b"POST" and path.endswith(b"/embeddings"):
            self.transport.write(r.embeddings)
        elif method == b"GET" and path.endswith(b"/models"):
            self.transport.write(r.models)
        else:
            self.transport.write(r.not_found)

    async def _paced_stream(self) -> None:
        """Write the events with a delay between content chunks, like a decoding engine."""
        assert self.transport is not None
        r = self.responses
        self.transport.write(r.stream_head + r.stream_events[0])
        for event in r.stream_events[1:]:
            await asyncio.sleep(self.token_delay)
            if self.transport.is_closing():
                return
            self.transport.write(event)
        self.transport.write(r.stream_end)
        self.busy = False
        self._serve()


async def serve(host: str, port: int, chunks: int, token_delay_ms: float) -> None:
    """Listen until SIGTERM or SIGINT; print the base URL once listening."""
    responses = Responses(chunks, DIMENSIONS)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: MockProtocol(responses, token_delay_ms / 1000.0), host, port, backlog=4096
    )
    bound = server.sockets[0].getsockname()[1]
    print(f"mock-openai is up: http://{host}:{bound}/v1", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--chunks", type=int, default=16, help="content chunks per stream")
    parser.add_argument("--token-delay-ms", type=float, default=0.0)
    args = parser.parse_args(argv)
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(args.host, args.port, args.chunks, args.token_delay_ms))
    else:
        uvloop.run(serve(args.host, args.port, args.chunks, args.token_delay_ms))
    return 0


if __name__ == "__main__":
    sys.exit(main())
