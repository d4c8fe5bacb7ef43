"""The auth service: Bearer parsing and key lookup."""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from meshgate import grpcio
from meshgate.config import Config
from meshgate.errors import DOC_URL_KEYS, ApiError
from meshgate.v1 import auth_pb2, auth_pb2_grpc
from services.auth.keys import ConfigKeyStore, KeyStore


def _unauthorized(message: str, code: str) -> ApiError:
    return ApiError(401, "authentication_error", message, code=code, doc_url=DOC_URL_KEYS)


MISSING = _unauthorized(
    "You didn't provide an API key. Send it in an Authorization header using Bearer auth "
    "(Authorization: Bearer YOUR_KEY).",
    "missing_api_key",
)
WRONG_SCHEME = _unauthorized(
    "Unsupported authorization scheme. Only Bearer tokens are accepted (Authorization: Bearer YOUR_KEY).",
    "invalid_auth_scheme",
)
INVALID = _unauthorized(
    "Invalid API key. Create one with `meshgate keys create`.",
    "invalid_api_key",
)


def parse_bearer(header: str) -> str | ApiError:
    """The key from `Bearer <key>`, or the precise error for a malformed header."""
    if not header.strip():
        return MISSING
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return WRONG_SCHEME
    token = token.strip()
    if not token or " " in token:
        return INVALID
    return token


class AuthService(auth_pb2_grpc.AuthServiceServicer):
    def __init__(self, store: KeyStore) -> None:
        self._store = store

    async def Authenticate(
        self,
        request: auth_pb2.AuthenticateRequest,
        context: grpc.aio.ServicerContext[
            auth_pb2.AuthenticateRequest, auth_pb2.AuthenticateResponse
        ],
    ) -> auth_pb2.AuthenticateResponse:
        token = parse_bearer(request.authorization)
        if isinstance(token, ApiError):
            await token.abort(context)
        principal = await self._store.lookup(token)
        if principal is None:
            await INVALID.abort(context)
        return auth_pb2.AuthenticateResponse(principal=principal)


async def run(config: Config) -> None:
    async def setup(server: grpc.aio.Server) -> Sequence[str]:
        auth_pb2_grpc.add_AuthServiceServicer_to_server(
            AuthService(ConfigKeyStore(config.keys)), server
        )
        return [auth_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name]

    cfg = config.services.auth
    await grpcio.serve("auth", cfg.host, cfg.port, setup)
