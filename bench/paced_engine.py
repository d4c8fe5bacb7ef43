"""A paced mock of an OpenAI-compatible engine that reports its real load the way vLLM,
SGLang or llama.cpp's llama-server do on `/metrics`.

It runs at most `--slots` requests at once (the rest wait, as in an engine's
scheduler queue), generates one token every `--token-ms`, and serves `/metrics`
with its queue, its running requests and its KV use, under each engine's own
names, help texts and labels:

- `vllm`: vllm/v1/metrics/loggers.py (vLLM commit 005a810b, 0.10): gauges labelled
  `model_name` and `engine`, rendered by prometheus_client as vLLM does.
  `vllm-0.8` serves only the older `vllm:gpu_cache_usage_perc` for KV use.
- `sglang`: python/sglang/srt/metrics/collector.py (SGLang commit 00ae9c15), labels
  from managers/scheduler_metrics_mixin.py. `sglang_` serves the same under the
  `sglang_` prefix of tools that rewrite the colon.
- `llama_cpp`: `server_task_result_metrics::to_metrics` in tools/server/server-task.cpp
  of the llama.cpp that llama-cpp-python 0.3.36 vendors (the real-engine tests' build):
  counters then gauges, three lines each, no labels, each value a double printed by a
  C++ stream; plus `/slots` (server_slot::to_json in server-context.cpp).

tests/test_engine_signals.py checks the pages against the fixtures in
tests/fixtures/engine_metrics/, which are written from those sources. A control
endpoint lets a test make `/metrics` hang or fail, or report fixed numbers, and
`/__stats` counts what was served.

    python bench/paced_engine.py --port 8123 --kind vllm --slots 4 --token-ms 20
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import uvicorn
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

KINDS = ("vllm", "vllm-0.8", "sglang", "sglang_", "llama_cpp")
# The context of each llama.cpp slot, as /slots reports it.
KV_TOKENS_PER_SLOT = 2048
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"
# llama-server sets exactly this (server-context.cpp, the /metrics route).
LLAMA_CPP_TEXT = "text/plain; version=0.0.4"


@dataclass
class Engine:
    kind: str
    slots: int
    token_ms: float
    model: str
    running: int = 0
    waiting: int = 0
    requests: int = 0
    max_running: int = 0
    # "live", "hang" (never answers) or "error" (a 500).
    metrics_mode: str = "live"
    # Numbers to report instead of the live ones ({"waiting": .., "running": .., "kv": ..}).
    report: dict[str, float] | None = None
    # Prompt heads seen, for prefix tests: how many requests began with each.
    heads: dict[str, int] = field(default_factory=dict)
    _free: asyncio.Semaphore | None = None
    # Set unless /metrics hangs.
    answering: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.answering.set()

    def free(self) -> asyncio.Semaphore:
        if self._free is None:
            self._free = asyncio.Semaphore(self.slots)
        return self._free

    def load(self) -> tuple[float, float, float]:
        if self.report is not None:
            return (
                self.report.get("waiting", 0.0),
                self.report.get("running", 0.0),
                self.report.get("kv", 0.0),
            )
        # Each running request holds one slot's share of the KV pool: a full batch is a
        # full cache, and new requests wait, as in vLLM when its KV blocks run out.
        return self.waiting, self.running, self.running / self.slots


# ------------------------------------------------------------- exposition ----


def _registry(engine: Engine) -> CollectorRegistry:
    """The gauges each engine registers, with its names, help texts and labels."""
    waiting, running, kv = engine.load()
    registry = CollectorRegistry()
    if engine.kind.startswith("vllm"):
        labels = {"model_name": engine.model, "engine": "0"}
        names = [
            (
                "vllm:num_requests_running",
                "Number of requests in model execution batches.",
                running,
            ),
            ("vllm:num_requests_waiting", "Number of requests waiting to be processed.", waiting),
            (
                "vllm:gpu_cache_usage_perc",
                "GPU KV-cache usage. 1 means 100 percent usage."
                "DEPRECATED: Use vllm:kv_cache_usage_perc instead.",
                kv,
            ),
        ]
        if engine.kind == "vllm":
            names.append(
                ("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", kv)
            )
    else:
        prefix = "sglang_" if engine.kind == "sglang_" else "sglang:"
        labels = {
            "model_name": engine.model,
            "engine_type": "unified",
            "tp_rank": "0",
            "pp_rank": "0",
        }
        names = [
            (prefix + "num_running_reqs", "The number of running requests.", running),
            (prefix + "token_usage", "The token usage.", kv),
            (prefix + "num_queue_reqs", "The number of requests in the waiting queue.", waiting),
        ]
    for name, documentation, value in names:
        gauge = Gauge(name, documentation, list(labels), registry=registry)
        gauge.labels(**labels).set(value)
    return registry


def _cpp(value: float) -> str:
    """A double as `std::stringstream << value` prints it (%g, six significant digits)."""
    return f"{value:g}"


def llama_cpp_metrics(engine: Engine) -> str:
    """llama-server's /metrics: its counters, then its gauges, three lines each."""
    waiting, running, _ = engine.load()
    counters = [
        (
            "prompt_tokens_total",
            "Number of prompt tokens processed, excluding cached tokens",
            engine.requests * 16.0,
        ),
        ("prompt_tokens_cached_total", "Number of prompt tokens reused from the cache", 0.0),
        ("prompt_seconds_total", "Total time spent processing prompts", engine.requests * 0.01),
        ("tokens_predicted_total", "Number of generation tokens processed", 0.0),
        ("tokens_predicted_seconds_total", "Total time spent generating tokens", 0.0),
        (
            "n_decode_total",
            "Total number of llama_decode() calls, excluding speculative decoding and "
            "multimodal decoding",
            0.0,
        ),
        ("n_tokens_max", "Largest observed sequence length (prompt + generation)", 0.0),
        ("spec_decode_num_draft_tokens_total", "Speculative: Total draft tokens generated", 0.0),
        (
            "spec_decode_num_accepted_tokens_total",
            "Speculative: Total draft tokens accepted by the target model",
            0.0,
        ),
        (
            "spec_decode_num_drafts_total",
            "Speculative: Total speculative decoding verification steps",
            0.0,
        ),
    ]
    gauges = [
        ("prompt_tokens_seconds", "Average prompt throughput in tokens/s", 0.0),
        ("predicted_tokens_seconds", "Average generation throughput in tokens/s", 0.0),
        ("requests_processing", "Number of requests processing", running),
        ("requests_deferred", "Number of requests deferred", waiting),
        ("n_busy_slots_per_decode", "Average number of busy slots per llama_decode() call", 0.0),
    ]
    lines = []
    for kind, items in (("counter", counters), ("gauge", gauges)):
        for name, description, value in items:
            lines += [
                f"# HELP llamacpp:{name} {description}",
                f"# TYPE llamacpp:{name} {kind}",
                f"llamacpp:{name} {_cpp(value)}",
            ]
    return "\n".join(lines) + "\n"


def llama_cpp_slots(engine: Engine) -> list[dict[str, Any]]:
    """llama-server's /slots (server_slot::to_json, metrics-only fields)."""
    busy = engine.running if engine.report is None else int(engine.report.get("running", 0))
    return [
        {
            "id": i,
            "n_ctx": KV_TOKENS_PER_SLOT,
            "speculative": False,
            "is_processing": i < busy,
        }
        for i in range(engine.slots)
    ]


# -------------------------------------------------------------------- app ----


def _prompt(body: dict[str, Any]) -> str:
    if "messages" in body:
        return "".join(str(m.get("content") or "") for m in body["messages"])
    prompt = body.get("prompt", "")
    return prompt[0] if isinstance(prompt, list) and prompt else str(prompt)


def app(engine: Engine) -> Starlette:
    async def generate(body: dict[str, Any]) -> AsyncIterator[int]:
        """Waits for a slot, then yields each generated token's index at the engine's pace."""
        prompt = _prompt(body)
        head = prompt[:64]
        engine.heads[head] = engine.heads.get(head, 0) + 1
        engine.requests += 1
        tokens = int(body.get("max_tokens") or body.get("max_completion_tokens") or 16)
        engine.waiting += 1
        try:
            await engine.free().acquire()
        finally:
            engine.waiting -= 1
        engine.running += 1
        engine.max_running = max(engine.max_running, engine.running)
        try:
            for i in range(tokens):
                await asyncio.sleep(engine.token_ms / 1000)
                yield i
        finally:
            engine.running -= 1
            engine.free().release()

    def usage(body: dict[str, Any], tokens: int) -> dict[str, int]:
        prompt = max(1, len(_prompt(body)) // 4)
        return {
            "prompt_tokens": prompt,
            "completion_tokens": tokens,
            "total_tokens": prompt + tokens,
        }

    async def completions(request: Request) -> Response:
        body = await request.json()
        chat = request.url.path.endswith("/chat/completions")
        created = int(time.time())
        if body.get("stream"):
            return StreamingResponse(_events(body, chat, created), media_type="text/event-stream")
        count = 0
        async for _ in generate(body):
            count += 1
        text = " la" * count
        choice: dict[str, Any] = {"index": 0, "finish_reason": "length", "logprobs": None}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        return JSONResponse(
            {
                "id": "cmpl-paced",
                "object": "chat.completion" if chat else "text_completion",
                "created": created,
                "model": engine.model,
                "choices": [choice],
                "usage": usage(body, count),
            }
        )

    async def _events(body: dict[str, Any], chat: bool, created: int) -> AsyncIterator[bytes]:
        count = 0
        async for i in generate(body):
            count += 1
            delta: dict[str, Any] = {"content": " la"}
            if i == 0:
                delta["role"] = "assistant"
            choice: dict[str, Any] = (
                {"index": 0, "delta": delta, "finish_reason": None}
                if chat
                else {"index": 0, "text": " la", "finish_reason": None}
            )
            yield _event(chat, created, engine.model, [choice])
        last: dict[str, Any] = (
            {"index": 0, "delta": {}, "finish_reason": "length"}
            if chat
            else {"index": 0, "text": "", "finish_reason": "length"}
        )
        yield _event(chat, created, engine.model, [last])
        yield _event(chat, created, engine.model, [], usage(body, count))
        yield b"data: [DONE]\n\n"

    async def metrics(request: Request) -> Response:
        if engine.metrics_mode == "hang":  # no answer until told otherwise
            await engine.answering.wait()
        if engine.metrics_mode == "error":
            return Response("engine error", status_code=500)
        if engine.kind == "llama_cpp":
            return Response(llama_cpp_metrics(engine), media_type=LLAMA_CPP_TEXT)
        return Response(generate_latest(_registry(engine)), media_type=PROMETHEUS_TEXT)

    async def slots(request: Request) -> Response:
        if engine.kind != "llama_cpp":
            return Response("Not Found", status_code=404)
        return JSONResponse(llama_cpp_slots(engine))

    async def models(request: Request) -> Response:
        return JSONResponse(
            {"object": "list", "data": [{"id": engine.model, "object": "model", "owned_by": "me"}]}
        )

    async def control(request: Request) -> Response:
        order = await request.json()
        engine.metrics_mode = order.get("metrics", engine.metrics_mode)
        if engine.metrics_mode == "hang":
            engine.answering.clear()
        else:
            engine.answering.set()
        if "report" in order:
            engine.report = order["report"]
        return JSONResponse({"metrics": engine.metrics_mode, "report": engine.report})

    async def stats(request: Request) -> Response:
        return JSONResponse(
            {
                "requests": engine.requests,
                "running": engine.running,
                "waiting": engine.waiting,
                "max_running": engine.max_running,
                "heads": engine.heads,
            }
        )

    return Starlette(
        routes=[
            Route("/v1/chat/completions", completions, methods=["POST"]),
            Route("/v1/completions", completions, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/slots", slots, methods=["GET"]),
            Route("/__control", control, methods=["POST"]),
            Route("/__stats", stats, methods=["GET"]),
        ]
    )


def _event(
    chat: bool,
    created: int,
    model: str,
    choices: list[dict[str, Any]],
    usage: dict[str, int] | None = None,
) -> bytes:
    event: dict[str, Any] = {
        "id": "cmpl-paced",
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": created,
        "model": model,
        "choices": choices,
    }
    if usage is not None:
        event["usage"] = usage
    return b"data: " + orjson.dumps(event) + b"\n\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--kind", choices=KINDS, default="vllm")
    parser.add_argument("--slots", type=int, default=4, help="requests generated at once")
    parser.add_argument("--token-ms", type=float, default=20.0, help="time per output token")
    parser.add_argument("--model", default="paced", help="the served model name")
    args = parser.parse_args()
    engine = Engine(args.kind, args.slots, args.token_ms, args.model)
    uvicorn.run(
        app(engine),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        timeout_graceful_shutdown=1,
    )


if __name__ == "__main__":
    main()
