"""A deliberately minimal HTTP/1.1 keep-alive client for load generation.

General-purpose clients (httpx, the openai SDK) spend hundreds of microseconds
of Python per request on header models, URL objects and JSON decoding; on a
2-core machine that CPU comes straight out of the gateway being measured. This
client is an `asyncio.Protocol` (one callback per read, no StreamReader
buffering), sends pre-built request bytes, and parses only what a benchmark
needs: the status code, Content-Length or chunked framing, and, for
server-sent events, how many events carry a content token and when.

Completion and token times are taken in `data_received`, i.e. when the bytes
reach the generator, not when the awaiting coroutine happens to be resumed.
"""

from __future__ import annotations

import asyncio
import re
import socket
import time
from collections.abc import Mapping
from typing import cast
from urllib.parse import urlsplit

# A streamed chunk with a non-empty content delta. The role chunk has
# `"content":""` and the finish chunk an empty delta, so neither counts.
TOKEN_EVENT = re.compile(rb'"content"\s*:\s*"(?!")')

_HEAD, _BODY, _CHUNK_SIZE, _CHUNK_DATA, _TRAILER = range(5)
_monotonic = time.monotonic


class Response:
    """What one response told us; times are `time.monotonic()` seconds."""

    __slots__ = (
        "body",
        "done_at",
        "first_token_at",
        "gaps",
        "last_token_at",
        "status",
        "tokens",
    )

    def __init__(self) -> None:
        self.status = 0
        self.tokens = 0
        self.first_token_at = 0.0
        self.last_token_at = 0.0
        self.done_at = 0.0
        self.body = b""
        # Seconds between successive content tokens, for a connection opened with
        # `gaps=True` (inter-token latency); tokens that came in one read add zeros.
        self.gaps: list[float] | None = None


class HttpConnection(asyncio.Protocol):
    """One keep-alive connection; one request in flight at a time (no pipelining)."""

    def __init__(self, keep_body: bool = False, gaps: bool = False) -> None:
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._sse = bytearray()
        self._state = _HEAD
        self._remaining = 0
        self._close_after = False
        self._stream = False
        self._keep_body = keep_body
        self._gaps = gaps
        self._waiter: asyncio.Future[Response] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._response = Response()
        self.closed = False

    @classmethod
    async def open(
        cls, host: str, port: int, keep_body: bool = False, gaps: bool = False
    ) -> HttpConnection:
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_connection(lambda: cls(keep_body, gaps), host, port)
        return protocol

    # -- asyncio.Protocol -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionError(f"connection closed mid-response: {exc}"))

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:
            return  # nothing asked for it; a stray byte is ignored rather than misparsed
        now = _monotonic()
        buf = self._buf
        buf += data
        try:
            self._parse(buf, now)
        except (ValueError, IndexError) as exc:
            self._fail(ConnectionError(f"unparseable response: {exc}"))

    # -- requests ---------------------------------------------------------------

    def request(self, raw: bytes, stream: bool, timeout: float) -> asyncio.Future[Response]:
        """Send pre-built request bytes; the future resolves with the whole response.

        The timeout is one timer handle on the connection, far cheaper than
        wrapping every request in asyncio.wait_for.
        """
        if self.closed or self._transport is None or self._transport.is_closing():
            raise ConnectionError("connection is closed")
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Response] = loop.create_future()
        self._waiter = waiter
        self._timer = loop.call_later(timeout, self._timed_out, timeout)
        self._response = Response()
        if self._gaps:
            self._response.gaps = []
        self._state = _HEAD
        self._stream = stream
        self._transport.write(raw)
        return waiter

    def close(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.close()

    # -- parsing ----------------------------------------------------------------

    def _parse(self, buf: bytearray, now: float) -> None:
        while True:
            state = self._state
            if state == _HEAD:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = bytes(buf[:end]).lower()
                del buf[: end + 4]
                self._response.status = int(head[9:12])
                self._close_after = b"\r\nconnection: close" in head
                if b"\r\ntransfer-encoding: chunked" in head:
                    self._state = _CHUNK_SIZE
                    continue
                at = head.find(b"\r\ncontent-length:")
                if at < 0:
                    raise ValueError("neither content-length nor chunked")
                line_end = head.find(b"\r\n", at + 2)
                self._remaining = int(head[at + 17 : line_end if line_end >= 0 else None])
                self._state = _BODY
            elif state == _BODY:
                if len(buf) < self._remaining:
                    return
                if self._keep_body:
                    self._response.body = bytes(buf[: self._remaining])
                del buf[: self._remaining]
                self._finish(now)
                return
            elif state == _CHUNK_SIZE:
                eol = buf.find(b"\r\n")
                if eol < 0:
                    return
                size = int(bytes(buf[:eol]).split(b";", 1)[0], 16)
                del buf[: eol + 2]
                if size == 0:
                    self._state = _TRAILER
                else:
                    self._remaining = size
                    self._state = _CHUNK_DATA
            elif state == _CHUNK_DATA:
                if len(buf) < self._remaining + 2:
                    return
                self._on_body(bytes(buf[: self._remaining]), now)
                del buf[: self._remaining + 2]
                self._state = _CHUNK_SIZE
            else:  # _TRAILER: header lines until an empty one
                eol = buf.find(b"\r\n")
                if eol < 0:
                    return
                del buf[: eol + 2]
                if eol == 0:
                    self._finish(now)
                    return

    def _on_body(self, chunk: bytes, now: float) -> None:
        response = self._response
        if self._keep_body:
            response.body += chunk
        if not self._stream:
            return
        sse = self._sse
        sse += chunk
        cut = sse.rfind(b"\n")
        if cut < 0:
            return
        count = len(TOKEN_EVENT.findall(sse, 0, cut))
        del sse[: cut + 1]
        if count:
            gaps = response.gaps
            if not response.tokens:
                response.first_token_at = now
            elif gaps is not None:
                gaps.append(now - response.last_token_at)
            if gaps is not None and count > 1:
                gaps.extend([0.0] * (count - 1))
            response.last_token_at = now
            response.tokens += count

    def _timed_out(self, timeout: float) -> None:
        self._timer = None
        self._fail(TimeoutError(f"no complete response within {timeout:g}s"))

    def _finish(self, now: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        response = self._response
        response.done_at = now
        waiter, self._waiter = self._waiter, None
        self._sse.clear()
        self._state = _HEAD
        if self._close_after:
            self.close()
        if waiter is not None and not waiter.done():
            waiter.set_result(response)

    def _fail(self, exc: Exception) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        waiter, self._waiter = self._waiter, None
        self.close()
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)


def split_base_url(base_url: str) -> tuple[str, int, str]:
    """host, port and path prefix of an http:// base URL such as http://127.0.0.1:8080/v1."""
    parts = urlsplit(base_url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"only plain http:// base URLs are supported, got {base_url!r}")
    return parts.hostname, parts.port or 80, parts.path.rstrip("/")


def build_request(
    base_url: str, path: str, key: str, body: bytes, headers: Mapping[str, str] | None = None
) -> bytes:
    """The complete bytes of one POST, built once and sent for every request.

    `headers` are the gateway's own routing headers (Portkey's provider and
    custom host), sent on every request as a user of that gateway would.
    """
    host, port, prefix = split_base_url(base_url)
    lines = [
        f"POST {prefix}{path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Content-Type: application/json",
        "Accept: */*",
        f"Content-Length: {len(body)}",
    ]
    if key:
        lines.append(f"Authorization: Bearer {key}")
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body
