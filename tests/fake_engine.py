"""A fake OpenAI-compatible engine that replays what the real llama.cpp server answered.

The exchanges in `fixtures/llama_cpp_server.json` were recorded from
llama-cpp-python 0.3.36's own server (`python -m llama_cpp.server`, SmolLM2-135M)
by `fixtures/record_llama_cpp.py`; they are replayed byte for byte.
`tests/test_http_engine.py` checks the recording against the live server when
llama-cpp-python is installed, so the fake cannot drift from the real thing.

Beyond replay, a control endpoint lets a test make the engine fail (`"fail"`:
every answer is the recorded 500), stream slowly without end (`"slow"`), refuse
generation with a 429 while its health check passes (`"busy"`), take a minute to
answer (`"hang"`), or drop the connection after a stream's first chunk (`"break"`);
`/__stats` reports open and closed streams so a test can see a disconnect arrive.
Like llama-cpp-python 0.3.36's server (`interrupt_requests`, on by default), a slow
stream ends with `[DONE]` when any other request arrives meanwhile, `GET /v1/models`
included: in `llama_cpp/server/app.py` every endpoint takes `llama_outer_lock`
(`get_llama_proxy`), and a stream that finds it held sends `[DONE]` and stops
(`get_event_publisher`). `/__stats` counts those as `interrupted`.

    python -m tests.fake_engine --port 8123
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

RECORDING = Path(__file__).resolve().parent / "fixtures" / "llama_cpp_server.json"


def load() -> dict[str, Any]:
    exchanges: dict[str, Any] = json.loads(RECORDING.read_text())["exchanges"]
    return exchanges


def app() -> Starlette:
    exchanges = load()
    state: dict[str, Any] = {
        "mode": "replay",
        "open": 0,
        "closed": 0,
        "requests": 0,
        "interrupted": 0,
        "arrivals": 0,
    }

    def replay(name: str) -> Response:
        exchange = exchanges[name]
        return Response(
            exchange["body"], status_code=exchange["status"], media_type=exchange["content_type"]
        )

    async def slow_events() -> Any:
        head = exchanges["chat_stream"]["body"].split("\n\n")[0] + "\n\n"
        state["open"] += 1
        arrivals = state["arrivals"]
        try:
            yield head.encode()
            while True:
                await asyncio.sleep(0.05)
                if state["arrivals"] != arrivals:  # another request came: llama-cpp-python stops
                    state["interrupted"] += 1
                    yield b"data: [DONE]\n\n"
                    return
                yield b'data: {"id": "x", "object": "chat.completion.chunk", "created": 1, "model": "smollm2", "choices": [{"index": 0, "delta": {"content": " la"}, "logprobs": null, "finish_reason": null}]}\n\n'
        finally:
            state["open"] -= 1
            state["closed"] += 1

    async def broken_events(name: str) -> Any:
        yield (exchanges[name]["body"].split("\n\n")[0] + "\n\n").encode()
        await asyncio.sleep(0.05)
        raise ConnectionResetError("the engine died midway")  # uvicorn drops the connection

    async def completions(request: Request) -> Response:
        state["requests"] += 1
        state["arrivals"] += 1
        body = await request.json()
        mode = state["mode"]
        if mode == "fail":
            return replay("invalid")
        if mode == "busy":
            error = {"message": "Too many requests", "type": "rate_limit", "code": 429}
            return JSONResponse({"error": error}, status_code=429)
        if mode == "hang":
            await asyncio.sleep(60)
        chat = request.url.path.endswith("/chat/completions")
        if body.get("stream"):
            if mode == "slow" and chat:
                return StreamingResponse(slow_events(), media_type="text/event-stream")
            if mode == "break":
                name = "chat_stream" if chat else "completion_stream"
                return StreamingResponse(broken_events(name), media_type="text/event-stream")
            return replay("chat_stream" if chat else "completion_stream")
        return replay("chat" if chat else "completion")

    async def models(request: Request) -> Response:
        state["arrivals"] += 1
        return replay("models") if state["mode"] != "fail" else replay("not_json")

    async def control(request: Request) -> Response:
        state["mode"] = (await request.json())["mode"]
        return JSONResponse({"mode": state["mode"]})

    async def stats(request: Request) -> Response:
        return JSONResponse(state)

    return Starlette(
        routes=[
            Route("/v1/chat/completions", completions, methods=["POST"]),
            Route("/v1/completions", completions, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/__control", control, methods=["POST"]),
            Route("/__stats", stats, methods=["GET"]),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(app(), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
