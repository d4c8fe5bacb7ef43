"""CORS, restricted by default: the API is for server-to-server calls.

With no allowlist, no response carries Access-Control-Allow-Origin and every
browser preflight is refused with a 403 envelope. Origins listed in
`edge.cors_allow_origins` get a normal preflight answer and the ACAO header.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edge.errors import error_response
from meshgate.errors import ApiError

ALLOW_METHODS = b"GET, POST"
ALLOW_HEADERS = b"authorization, content-type, x-request-id, openai-organization, openai-project"
EXPOSE_HEADERS = (
    b"x-request-id, retry-after, x-ratelimit-limit-requests, x-ratelimit-limit-tokens, "
    b"x-ratelimit-remaining-requests, x-ratelimit-remaining-tokens, "
    b"x-ratelimit-reset-requests, x-ratelimit-reset-tokens, x-ratelimit-limit-budget-usd, "
    b"x-ratelimit-remaining-budget-usd, x-ratelimit-reset-budget, retry-after-ms, x-should-retry"
)


def preflight_refused(origin: str) -> ApiError:
    return ApiError(
        403,
        "invalid_request_error",
        f"Cross-origin requests from {origin!r} are not allowed: this API is meant for "
        "server-to-server calls. Ask the operator to add the origin to edge.cors_allow_origins.",
    )


class Cors:
    def __init__(self, app: ASGIApp, allow_origins: tuple[str, ...]) -> None:
        self.app = app
        self.allow_all = "*" in allow_origins
        self.allow = {o.encode() for o in allow_origins}

    def _allowed(self, origin: bytes) -> bool:
        return self.allow_all or origin in self.allow

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        origin = b""
        preflight = False
        for name, value in scope["headers"]:
            if name == b"origin":
                origin = value
            elif name == b"access-control-request-method":
                preflight = True
        if not origin:
            await self.app(scope, receive, send)
            return
        if preflight and scope["method"] == "OPTIONS":
            if not self._allowed(origin):
                response = error_response(preflight_refused(origin.decode("latin-1")))
                await response(scope, receive, send)
                return
            await send(
                {
                    "type": "http.response.start",
                    "status": 204,
                    "headers": [
                        (b"access-control-allow-origin", origin),
                        (b"access-control-allow-methods", ALLOW_METHODS),
                        (b"access-control-allow-headers", ALLOW_HEADERS),
                        (b"access-control-max-age", b"600"),
                        (b"vary", b"Origin"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": b""})
            return
        if not self._allowed(origin):
            await self.app(scope, receive, send)
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [
                    *message.get("headers", []),
                    (b"access-control-allow-origin", origin),
                    (b"access-control-expose-headers", EXPOSE_HEADERS),
                    (b"vary", b"Origin"),
                ]
            await send(message)

        await self.app(scope, receive, send_with_cors)
