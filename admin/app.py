"""The admin listener: the admin API under `/admin/v1` and the dashboard at `/`.

A thin Starlette app like the edge, with no state of its own: it speaks JSON
(and, for the dashboard, HTML) outside and gRPC to auth, ledger and router
inside (admin/mesh.py). Run it with `meshgate serve admin`; `meshgate up`
starts it with the rest of the mesh.
"""

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
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from admin import dashboard, pages
from admin.api import OPERATIONS, PREFIX, endpoint
from admin.mesh import AdminMesh
from admin.openapi import openapi_json
from edge.errors import http_error_handler
from edge.headers import RequestIds
from edge.limits import HeaderLimit
from meshgate import errors
from meshgate.config import Config


async def healthz(request: Request) -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


async def readyz(request: Request) -> Response:
    """Ready when auth answers: without it no admin request can be authenticated."""
    services = await request.app.state.mesh.ready()
    status = 200 if services.get("auth") else 503
    body = {"status": "ok" if status == 200 else "unavailable", "services": services}
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def create_app(config: Config) -> Starlette:
    errors.use_doc_pages(config.doc_pages())  # the admin API's own 401s point at /keys too

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.mesh = AdminMesh(config)  # channels are created inside the server's loop
        try:
            yield
        finally:
            await app.state.mesh.close()

    routes: list[BaseRoute] = [
        Route(PREFIX + op.path, endpoint(op), methods=[op.method]) for op in OPERATIONS
    ]
    routes += [
        Route(PREFIX + "/openapi.json", openapi_json, methods=["GET"]),
        Route("/", dashboard.home, methods=["GET"]),
        Route("/signin", dashboard.signin_form, methods=["GET"]),
        Route("/signin", dashboard.signin, methods=["POST"]),
        Route("/signout", dashboard.signout, methods=["POST"]),
        *pages.ROUTES,
        Mount("/static", StaticFiles(directory=dashboard.STATIC), name="static"),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
    ]
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(RequestIds),
            Middleware(HeaderLimit, max_bytes=config.edge.max_header_bytes),
            Middleware(dashboard.SecurityHeaders),
        ],
        exception_handlers={HTTPException: http_error_handler},
        lifespan=lifespan,
    )
    app.state.dashboard = dashboard.Dashboard(config)
    return app


def run(config: Config) -> None:
    """Serve until SIGTERM."""
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(config),
            host=config.admin.host,
            port=config.admin.port,
            loop="uvloop",
            lifespan="on",
            access_log=False,
            log_config=None,
            server_header=False,
            timeout_graceful_shutdown=10,
        )
    )
    server.run()
