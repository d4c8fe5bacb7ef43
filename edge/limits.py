"""Request header size limit: oversized headers get a 431 envelope before any work is done.

uvicorn's httptools parser sets no limit of its own, so without this a client
could send megabytes of headers that every hop would then carry.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from edge.errors import error_response
from meshgate.errors import ApiError


class HeaderLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            size = sum(len(name) + len(value) for name, value in scope["headers"])
            if size > self.max_bytes:
                error = ApiError(
                    431,
                    "invalid_request_error",
                    f"Request headers too large: {size} bytes, the limit is {self.max_bytes}.",
                )
                await error_response(error)(scope, receive, send)
                return
        await self.app(scope, receive, send)
