"""The edge: a thin Starlette app that speaks OpenAI HTTP outside and gRPC inside."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from edge import grpc_entry, pipeline
from edge.cors import Cors
from edge.errors import http_error_handler, malformed_http_response
from edge.headers import RequestIds, new_request_id
from edge.limits import HeaderLimit
from edge.mesh import Mesh
from edge.openapi import openapi_json
from meshgate import errors
from meshgate.config import Config
from meshgate.grpcio import start_metrics


async def healthz(request: Request) -> Response:
    """Liveness: the process answers."""
    return Response(b'{"status":"ok"}', media_type="application/json")


async def readyz(request: Request) -> Response:
    """Readiness: every service the edge calls answers its gRPC health check."""
    services = await request.app.state.mesh.ready()
    status = 200 if all(services.values()) else 503
    body = {"status": "ok" if status == 200 else "unavailable", "services": services}
    return Response(
        orjson.dumps(body),
        status_code=status,
        media_type="application/json",
    )


def create_app(config: Config) -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.mesh = Mesh(config)  # channels are created once, inside the server's loop
        app.state.mesh.start()
        gateway = None
        if config.edge.grpc_port:
            gateway = await grpc_entry.start(
                app.state.mesh, config.edge.host, config.edge.grpc_port, config.tls
            )
        try:
            yield
        finally:
            if gateway is not None:
                await gateway.stop(30)
            await app.state.mesh.close()

    routes = [
        Route("/v1/chat/completions", pipeline.chat_completions, methods=["POST"]),
        Route("/v1/completions", pipeline.completions, methods=["POST"]),
        Route("/v1/embeddings", pipeline.embeddings, methods=["POST"]),
        Route("/v1/responses", pipeline.responses, methods=["POST"]),
        Route(
            "/v1/responses/{response_id:path}",
            pipeline.stored_response,
            methods=["GET", "DELETE", "POST"],
        ),
        Route("/v1/models", pipeline.list_models, methods=["GET"]),
        Route("/v1/models/{model_id:path}", pipeline.get_model, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/openapi.json", openapi_json, methods=["GET"]),
    ]
    middleware = [
        Middleware(RequestIds),
        Middleware(HeaderLimit, max_bytes=config.edge.max_header_bytes),
        Middleware(Cors, allow_origins=config.edge.cors_allow_origins),
    ]
    errors.use_doc_pages(config.doc_pages())
    app = Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={HTTPException: http_error_handler},
        lifespan=lifespan,
    )
    app.state.unsupported = config.edge.unsupported  # edge/errors.py's 404 messages
    return app


class EdgeProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, answering unparseable requests with the envelope too."""

    def send_400_response(self, msg: str) -> None:
        self.transport.write(malformed_http_response(new_request_id()))
        self.transport.close()


def run(config: Config) -> None:
    """Serve until SIGTERM; uvicorn then lets open responses (streams included) finish."""
    if config.edge.metrics_port:
        start_metrics("edge", config.edge.host, config.edge.metrics_port)
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(config),
            host=config.edge.host,
            port=config.edge.port,
            loop="uvloop",
            http=EdgeProtocol,
            lifespan="on",
            access_log=False,
            log_config=None,
            server_header=False,
            timeout_graceful_shutdown=30,
        )
    )
    server.run()
