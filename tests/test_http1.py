"""The router's HTTP/1.1 engine client against real sockets: raw asyncio servers that
answer the way engines and proxies do (keep-alive, chunked, close-delimited, stale
connections, silence, CONNECT tunnels with TLS)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from meshgate.config import Config, EngineReplica, ModelConfig
from services.router.adapters.openai_http import http1
from tests.test_mtls import make_pki

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> tuple[str, dict[str, str], bytes]:
    """The request line, the headers (lower-cased) and the body of one request."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    line, *fields = head.split("\r\n")[:-2]
    headers = {k.strip().lower(): v.strip() for k, v in (f.split(":", 1) for f in fields)}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return line, headers, body


class Server:
    """A loopback server that counts the connections it accepts."""

    def __init__(self, handler: Handler, *, context: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.context = context
        self.accepted = 0
        self.lines: list[str] = []
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> Server:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.accepted += 1
            try:
                await self.handler(reader, writer)
            except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
                pass  # the client left, or the test ended
            finally:
                writer.close()

        self.server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=self.context)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])


def pool(url: str, *, limit: int = 8, proxy: str | None = None) -> http1.Pool:
    return http1.Pool(
        http1.Target(url, proxy), {"accept": "application/json"}, limit=limit, keepalive_s=30.0
    )


async def get(p: http1.Pool, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    return await p.fetch("GET", path, None, {}, timeout)


def echo_keepalive(server_lines: list[str]) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            line, headers, body = await read_request(reader)
            server_lines.append(line)
            answer = f"{line}|{headers.get('host')}|{len(body)}".encode()
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(answer), answer))
            await writer.drain()

    return handler


def test_keep_alive_reuses_one_connection_and_sends_the_prefix_host_and_body() -> None:
    async def main() -> None:
        lines: list[str] = []
        async with Server(echo_keepalive(lines)) as server:
            p = pool(f"http://127.0.0.1:{server.port}/v1")
            for _ in range(5):
                assert await get(p, "/models") == (
                    200,
                    f"GET /v1/models HTTP/1.1|127.0.0.1:{server.port}|0".encode(),
                )
            answer = await p.fetch("POST", "/chat", b'{"a":1}', {"x-meshgate-request-id": "r"}, 5)
            assert answer == (200, f"POST /v1/chat HTTP/1.1|127.0.0.1:{server.port}|7".encode())
            assert server.accepted == 1
            await p.close()

    asyncio.run(main())


def test_a_pooled_connection_the_engine_closed_is_replaced_without_an_error() -> None:
    async def one_answer_then_close(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await read_request(reader)
        # Says keep-alive, then closes anyway: what an engine's idle timeout does.
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()

    async def main() -> None:
        async with Server(one_answer_then_close) as server:
            p = pool(f"http://127.0.0.1:{server.port}")
            assert await get(p, "/a") == (200, b"ok")
            await asyncio.sleep(0.05)  # the close reaches the idle connection
            assert await get(p, "/b") == (200, b"ok")
            assert server.accepted == 2

    asyncio.run(main())


def test_a_connection_reset_after_the_request_was_answered_in_part_is_an_error() -> None:
    async def half_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")
        await writer.drain()

    async def main() -> None:
        async with Server(half_answer) as server:
            p = pool(f"http://127.0.0.1:{server.port}")
            connection = await p.send("GET", "/", None, {}, 5)
            with pytest.raises(http1.HttpError, match="closed before the response ended"):
                await connection.read()
            p.discard(connection)
            assert server.accepted == 1  # not sent again: the engine had started answering

    asyncio.run(main())


def test_chunked_bodies_stream_as_they_come_and_close_delimited_ones_end_at_eof() -> None:
    async def chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line, _, _ = await read_request(reader)
        if "close" in line:
            writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nall of it")
            await writer.drain()
            return
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        for piece in (b"data: 1\n\n", b"data: 2\n\n"):
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
            await asyncio.sleep(0.02)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        await read_request(reader)  # the connection stays open for the next

    async def main() -> None:
        async with Server(chunked) as server:
            p = pool(f"http://127.0.0.1:{server.port}")
            connection = await p.send("POST", "/stream", b"{}", {}, 5)
            pieces = [piece async for piece in connection.pieces()]
            assert pieces == [b"data: 1\n\n", b"data: 2\n\n"]
            assert connection.reusable
            p.release(connection)

            connection = await p.send("GET", "/close", None, {}, 5)
            assert await connection.read() == b"all of it"
            assert not connection.reusable  # the engine said close
            p.release(connection)

    asyncio.run(main())


def test_the_deadline_covers_the_whole_exchange_and_frees_the_connection() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await reader.read()  # never answers; returns when the client closes

    async def main() -> None:
        async with Server(silent) as server:
            p = pool(f"http://127.0.0.1:{server.port}", limit=1)
            loop = asyncio.get_running_loop()
            for _ in range(2):  # the second can only get a connection if the first freed it
                started = loop.time()
                with pytest.raises(TimeoutError):
                    await p.send("GET", "/", None, {}, 0.2)
                assert 0.19 < loop.time() - started < 1.0
            assert server.accepted == 2

    asyncio.run(main())


def test_beyond_the_limit_callers_queue_for_a_connection_and_all_are_answered() -> None:
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            await asyncio.sleep(0.02)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            await writer.drain()

    async def main() -> None:
        async with Server(slow) as server:
            p = pool(f"http://127.0.0.1:{server.port}", limit=2)
            answers = await asyncio.gather(*(get(p, f"/{i}") for i in range(10)))
            assert answers == [(200, b"ok")] * 10
            assert server.accepted == 2

    asyncio.run(main())


def test_an_unreachable_engine_and_garbage_are_http_errors() -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"SMTP ready\r\n\r\n")
        await writer.drain()

    async def main() -> None:
        async with Server(garbage) as server:
            port = server.port
            with pytest.raises(http1.HttpError, match="unparsable"):
                await get(pool(f"http://127.0.0.1:{port}"), "/")
        with pytest.raises(http1.HttpError, match="cannot connect"):
            await get(pool(f"http://127.0.0.1:{port}"), "/")  # closed now

    asyncio.run(main())


def test_a_plain_http_proxy_gets_the_absolute_url_and_the_credentials() -> None:
    async def main() -> None:
        lines: list[str] = []
        seen: dict[str, str] = {}

        async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            line, headers, _ = await read_request(reader)
            lines.append(line)
            seen.update(headers)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\nproxied")
            await writer.drain()

        async with Server(proxy) as server:
            p = pool(
                "http://vllm.internal:8000/v1", proxy=f"http://u%40x:p%3Aw@127.0.0.1:{server.port}"
            )
            assert await get(p, "/models") == (200, b"proxied")
        assert lines == ["GET http://vllm.internal:8000/v1/models HTTP/1.1"]
        assert seen["host"] == "vllm.internal:8000"
        assert seen["proxy-authorization"] == "Basic dUB4OnA6dw=="  # base64("u@x:p:w")

    asyncio.run(main())


def test_https_through_a_connect_tunnel_verifies_the_engine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pki = make_pki(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(pki["ca"]))  # how a user trusts a private CA
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki["cert"], pki["key"])

    async def main() -> None:
        async with Server(echo_keepalive([]), context=context) as engine:
            tunnels: list[str] = []

            async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                line, _, _ = await read_request(reader)
                tunnels.append(line)
                upstream_reader, upstream_writer = await asyncio.open_connection(
                    "127.0.0.1", engine.port
                )
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")

                async def pipe(a: asyncio.StreamReader, b: asyncio.StreamWriter) -> None:
                    while data := await a.read(65536):
                        b.write(data)
                        await b.drain()
                    b.close()

                await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))

            async with Server(proxy) as proxied:
                url = f"https://localhost:{engine.port}/v1"
                p = pool(url, proxy=f"http://127.0.0.1:{proxied.port}")
                for _ in range(2):
                    status, body = await get(p, "/models")
                    assert status == 200
                    assert body == f"GET /v1/models HTTP/1.1|localhost:{engine.port}|0".encode()
                assert tunnels == [f"CONNECT localhost:{engine.port} HTTP/1.1"]  # kept alive
                await p.close()

            # Straight to the engine: its certificate is checked against the trusted CA.
            assert (await get(pool(f"https://localhost:{engine.port}"), "/x"))[0] == 200
            monkeypatch.setenv("SSL_CERT_FILE", str(pki["rogue_cert"]))
            with pytest.raises(http1.HttpError, match="TLS failed"):
                await get(pool(f"https://localhost:{engine.port}"), "/x")

    asyncio.run(main())


def test_a_finished_stream_keeps_its_connection_when_the_last_chunk_comes_late() -> None:
    async def late_end(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            done = b"data: [DONE]\n\n"
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            writer.write(b"%x\r\n%s\r\n" % (len(done), done))
            await writer.drain()
            await asyncio.sleep(0.05)  # the terminating chunk, a packet later
            writer.write(b"0\r\n\r\n")
            await writer.drain()

    async def main() -> None:
        async with Server(late_end) as server:
            p = pool(f"http://127.0.0.1:{server.port}")
            for _ in range(3):
                connection = await p.send("POST", "/s", b"{}", {}, 5)
                async for piece in connection.pieces():
                    assert piece.startswith(b"data: [DONE]")
                    break
                p.finish(connection)
                await asyncio.sleep(0.1)
            assert server.accepted == 1

            connection = await p.send("POST", "/s", b"{}", {}, 5)
            p.discard(connection)  # stopped early: the engine sees the connection close
            await asyncio.sleep(0.05)
            await get_answer_on_new_connection(p)
            assert server.accepted == 2

    async def get_answer_on_new_connection(p: http1.Pool) -> None:
        _, body = await p.fetch("POST", "/s", b"{}", {}, 5)
        assert b"[DONE]" in body

    asyncio.run(main())


def test_a_slow_reader_stops_the_connection_reading_instead_of_buffering_the_body() -> None:
    size = 4 * 1024 * 1024

    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % size)
        writer.write(b"x" * size)
        await writer.drain()

    async def main() -> None:
        async with Server(flood) as server:
            p = pool(f"http://127.0.0.1:{server.port}")
            connection = await p.send("GET", "/", None, {}, 10)
            received, most_buffered = 0, 0
            async for piece in connection.pieces():
                received += len(piece)
                most_buffered = max(most_buffered, len(piece))
                await asyncio.sleep(0.01)  # a client reading slowly
            assert received == size
            assert most_buffered <= 2 * http1.HIGH_WATER  # not the whole 4 MiB
            p.release(connection)

    asyncio.run(main())


def test_a_header_value_with_a_line_break_is_refused_not_sent() -> None:
    async def main() -> None:
        lines: list[str] = []
        async with Server(echo_keepalive(lines)) as server:
            p = pool(f"http://127.0.0.1:{server.port}")
            with pytest.raises(http1.HttpError, match="line break"):
                await p.send("GET", "/", None, {"x-id": "a\r\nx-admin: yes"}, 5)
            assert await get(p, "/ok") == (
                200,
                f"GET /ok HTTP/1.1|127.0.0.1:{server.port}|0".encode(),
            )
        assert lines == ["GET /ok HTTP/1.1"]

    asyncio.run(main())


COMPLETION = (
    b'{"id":"c","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,'
    b'"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],'
    b'"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}'
)


def test_an_engine_gets_as_many_connections_as_requests_unless_max_concurrency_says() -> None:
    """The adapter's pool is no hidden limit: 600 requests in flight at once reach the
    engine together (it answers none until all are in; a cap of 512 would hang them).
    `max_concurrency` is the operator's limit, and the pool keeps to it."""
    from meshgate.v1 import inference_pb2
    from services.router.adapters import connect

    together = 600

    def answering_once(calls: int) -> Handler:
        """An engine that answers nothing until `calls` requests have arrived."""
        arrived = 0
        all_in = asyncio.Event()

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal arrived
            while True:
                await read_request(reader)
                arrived += 1
                if arrived >= calls:
                    all_in.set()
                await all_in.wait()
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(COMPLETION))
                writer.write(COMPLETION)
                await writer.drain()

        return handler

    request = inference_pb2.ChatCompletionRequest(
        model="m", messages=[inference_pb2.ChatMessage(role="user", text="hi")]
    )

    async def scenario(max_concurrency: int, calls: int, held_until: int) -> int:
        async with Server(answering_once(held_until)) as server:
            url = f"http://127.0.0.1:{server.port}/v1"
            replica = EngineReplica(kind="openai_http", url=url, max_concurrency=max_concurrency)
            adapter = connect(ModelConfig(id="m", engines=(replica,)), replica, Config())
            try:
                answers = await asyncio.wait_for(
                    asyncio.gather(*(adapter.chat(request, 20.0) for _ in range(calls))), 30
                )
            finally:
                await adapter.close()
            assert [a.usage.completion_tokens for a in answers] == [1] * calls
            return server.accepted

    assert asyncio.run(scenario(0, together, held_until=together)) == together
    assert asyncio.run(scenario(4, 40, held_until=1)) == 4  # answers each at once
