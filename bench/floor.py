"""The transport's floor: what one empty request and its answer cost on this machine.

No meshgate hop can be cheaper than an empty `grpc.aio` unary call between two
processes, made with meshgate's own channel and server options on uvloop.
Timing a plain asyncio TCP round trip beside it shows how much of that is
gRPC's machinery rather than the kernel's loopback. Both run at concurrency 1,
one client, one server process, a 200-byte payload echoed back.

A streamed token crosses one server-stream message instead, so the floor of the
relay is what one such message costs: 64 streams of 64 messages 20 ms apart (the
relay scenario's schedule, bench/relay.py), minus the same calls with one message
each, over the extra messages.

    python -m bench.floor            # prints the JSON the full benchmark stores
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any, cast

import grpc

from bench.procstat import cpu_seconds
from bench.stack import ROOT, child_env, die_with_parent, free_ports
from meshgate.grpcio import CHANNEL_OPTIONS, SERVER_OPTIONS

CALLS = 2000
WARMUP = 200
PAYLOAD = b"x" * 200
METHOD = "/meshgate.bench.Echo/Echo"
STREAM_METHOD = "/meshgate.bench.Echo/Stream"
# The relay scenario's schedule (bench/relay.py): paced, so no message rides with another.
STREAMS = 64
STREAM_MESSAGES = 64
STREAM_GAP_S = 0.02
STREAM_ROUNDS = 3


def _identity(data: bytes) -> bytes:
    return data


async def _grpc_server(port: int) -> None:
    async def echo(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        return request

    async def stream(
        request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> AsyncIterator[bytes]:
        for _ in range(int(request)):
            await asyncio.sleep(STREAM_GAP_S)
            yield PAYLOAD

    server = grpc.aio.server(options=SERVER_OPTIONS)
    handlers = {
        "Echo": grpc.unary_unary_rpc_method_handler(echo, _identity, _identity),
        "Stream": grpc.unary_stream_rpc_method_handler(stream, _identity, _identity),
    }
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("meshgate.bench.Echo", handlers),)
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


class _Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self._transport.write(data)


async def _raw_server(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(_Echo, "127.0.0.1", port)
    await server.serve_forever()


async def _time_calls(call: Any, server_pid: int) -> dict[str, float]:
    for _ in range(WARMUP):
        await call()
    server_before, client_before = cpu_seconds(server_pid) or 0.0, time.process_time()
    samples = []
    for _ in range(CALLS):
        started = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - started)
    server_cpu = (cpu_seconds(server_pid) or 0.0) - server_before
    client_cpu = time.process_time() - client_before
    return {
        "p50_us": round(statistics.median(samples) * 1e6, 1),
        "cpu_us": round((server_cpu + client_cpu) / CALLS * 1e6, 1),
    }


async def _grpc_client(port: int, server_pid: int) -> dict[str, float]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=CHANNEL_OPTIONS) as channel:
        echo = channel.unary_unary(
            METHOD, request_serializer=_identity, response_deserializer=_identity
        )
        await channel.channel_ready()
        return await _time_calls(lambda: echo(PAYLOAD), server_pid)


async def _stream_client(port: int, server_pid: int) -> dict[str, float]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=CHANNEL_OPTIONS) as channel:
        stream = channel.unary_stream(
            STREAM_METHOD, request_serializer=_identity, response_deserializer=_identity
        )
        await channel.channel_ready()

        async def one(messages: int) -> int:
            return sum([1 async for _ in stream(str(messages).encode())])

        async def window(messages: int) -> tuple[float, int, float]:
            server_before, client_before = cpu_seconds(server_pid) or 0.0, time.process_time()
            started, got = time.monotonic(), 0
            for _ in range(STREAM_ROUNDS):
                got += sum(await asyncio.gather(*(one(messages) for _ in range(STREAMS))))
            cpu = (cpu_seconds(server_pid) or 0.0) - server_before
            return cpu + time.process_time() - client_before, got, time.monotonic() - started

        await window(STREAM_MESSAGES)  # warm-up
        long_cpu, long_got, long_s = await window(STREAM_MESSAGES)
        short_cpu, short_got, _ = await window(1)
        return {
            "cpu_us": round((long_cpu - short_cpu) / (long_got - short_got) * 1e6, 1),
            "messages_per_s": round(long_got / long_s),
        }


async def _raw_client(port: int, server_pid: int) -> dict[str, float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def call() -> None:
        writer.write(PAYLOAD)
        await reader.readexactly(len(PAYLOAD))

    try:
        return await _time_calls(call, server_pid)
    finally:
        writer.close()


def _measure(kind: str) -> dict[str, float]:
    import uvloop

    (port,) = free_ports(1)
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.floor",
            "--serve",
            "raw" if kind == "raw" else "grpc",
            str(port),
        ],
        cwd=ROOT,
        env=child_env(),
        preexec_fn=die_with_parent(),
    )
    try:
        deadline = time.monotonic() + 10
        client = {"grpc": _grpc_client, "stream": _stream_client, "raw": _raw_client}[kind]
        while True:
            try:
                return uvloop.run(client(port, server.pid))
            except (OSError, grpc.aio.AioRpcError):
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.1)
    finally:
        server.terminate()
        server.wait(5)


def probe_floor() -> dict[str, dict[str, float]]:
    """p50 latency and CPU (client + server) of one empty round trip, gRPC and plain TCP."""
    return {"grpc_unary": _measure("grpc"), "asyncio_tcp": _measure("raw")}


def probe_stream_floor() -> dict[str, float]:
    """CPU (client + server) of one paced server-stream message, the relay's unit."""
    return _measure("stream")


def main(argv: list[str]) -> int:
    if argv[:1] == ["--serve"]:
        import uvloop

        kind, port = argv[1], int(argv[2])
        uvloop.run(_grpc_server(port) if kind == "grpc" else _raw_server(port))
        return 0
    print(json.dumps({**probe_floor(), "grpc_stream_message": probe_stream_floor()}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
