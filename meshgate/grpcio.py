"""What every gRPC process of the mesh shares: channels and the server lifecycle.

Each service module exposes `add_to_server(server, config)`; `serve` wraps it
with health checking, reflection, signal handling and a graceful drain, in the
manner of grpc's asyncio examples.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeAlias

import grpc
import prometheus_client
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from meshgate import logs
from meshgate.config import ServiceConfig, TlsConfig

log = logging.getLogger("meshgate.grpc")

# Trailing metadata in which the router reports the engine's own time, in µs.
ENGINE_TIME_KEY = "x-engine-time-us"
# The engine replica that served a call: trailing metadata of unary calls, initial of streams.
REPLICA_KEY = "x-engine-replica"
# The catalog model that served a call (a fallback's, if one took over), beside REPLICA_KEY;
# the edge repeats it to clients as the `x-meshgate-model` header.
MODEL_KEY = "x-meshgate-model"

# The servicer context every handler receives; message types are checked at the proto layer.
Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]

# Largest message between meshgate's processes: above the largest body the edge may
# accept (config.MAX_BODY_BYTES), since a request travels as its raw JSON plus a little.
MAX_MESSAGE_BYTES = 160 * 1024 * 1024
# How long a server keeps one client connection. A new replica gets traffic only once
# its clients re-resolve, which they do when a connection ends; 5 s makes that seconds.
# Its cost is a reconnect (and a TLS handshake with mTLS) per client and replica every
# 5 s, during which new calls use the client's other connections or wait for the new one.
MAX_CONNECTION_AGE_MS = 5_000
# The shortest pause between two DNS resolutions of one channel.
DNS_MIN_INTERVAL_MS = 1_000
# gRPC's "no limit" for a duration in milliseconds (INT_MAX).
UNLIMITED_MS = 2**31 - 1
# Keepalive lets a client notice a dead peer (kill -9) without waiting for a deadline.
CHANNEL_OPTIONS: tuple[tuple[str, int | str], ...] = (
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.lb_policy_name", "round_robin"),
    # A connection that ends (a server's max age, below) re-resolves the name at once:
    # gRPC's default waits 30 s between resolutions, which would hide a new replica.
    ("grpc.dns_min_time_between_resolutions_ms", DNS_MIN_INTERVAL_MS),
    # gRPC's own retry policy costs every call (it cut throughput by a third here);
    # the edge and the router retry a call whose replica died themselves, once.
    ("grpc.enable_retries", 0),
)
SERVER_OPTIONS: tuple[tuple[str, int | str], ...] = (
    # Clients re-resolve DNS when a connection ends: ending each one after a few seconds
    # (gracefully: GOAWAY, and new calls go to a fresh connection) lets replicas added by
    # `--scale` or an HPA receive traffic within MAX_CONNECTION_AGE_MS (gRPC adds ±10 %).
    ("grpc.max_connection_age_ms", MAX_CONNECTION_AGE_MS),
    # No limit on the grace: calls in flight on an aged connection (a long stream too)
    # finish on it, and it closes after its last one. Every call has a deadline anyway.
    ("grpc.max_connection_age_grace_ms", UNLIMITED_MS),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
    ("grpc.http2.max_ping_strikes", 0),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.so_reuseport", 0),
)
# Seconds in-flight RPCs (streams included) get to finish after SIGTERM.
DRAIN_GRACE_S = 30.0


class RequestIds(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Takes `x-request-id` from each call's metadata into the log context, and logs the call at DEBUG."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        for key, value in details.invocation_metadata or ():
            if key == "x-request-id":
                logs.request_id.set(str(value))
                break
        if log.isEnabledFor(logging.DEBUG):
            log.debug("call", extra={"method": details.method})
        return await continuation(details)


def _read(path: str) -> bytes:
    with open(path, "rb") as file:
        return file.read()


def client_credentials(
    tls: TlsConfig,
) -> tuple[grpc.ChannelCredentials, tuple[tuple[str, str], ...]]:
    """Credentials presenting our certificate, and the name override if one is set."""
    credentials = grpc.ssl_channel_credentials(
        root_certificates=_read(tls.ca_file),
        private_key=_read(tls.key_file),
        certificate_chain=_read(tls.cert_file),
    )
    override = (("grpc.ssl_target_name_override", tls.server_name),) if tls.server_name else ()
    return credentials, override


def channel(target: str, tls: TlsConfig | None = None) -> grpc.aio.Channel:
    """One long-lived channel per target; callers keep it for the process lifetime."""
    if tls is None or not tls.enabled:
        return grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
    credentials, override = client_credentials(tls)
    return grpc.aio.secure_channel(target, credentials, options=CHANNEL_OPTIONS + override)


def listen_on(server: grpc.aio.Server, address: str, tls: TlsConfig | None) -> int:
    """Bind plaintext, or mutual TLS that refuses any caller without a certificate from the CA."""
    if tls is None or not tls.enabled:
        return server.add_insecure_port(address)
    credentials = grpc.ssl_server_credentials(
        [(_read(tls.key_file), _read(tls.cert_file))],
        root_certificates=_read(tls.ca_file),
        require_client_auth=True,
    )
    return server.add_secure_port(address, credentials)


Setup = Callable[[grpc.aio.Server], Awaitable[Sequence[str]]]


def start_metrics(name: str, host: str, port: int) -> None:
    """Serve Prometheus /metrics on host:port from a thread; a taken port is a clear exit."""
    try:
        prometheus_client.start_http_server(port, addr=host)
    except OSError as exc:
        raise SystemExit(
            f"meshgate {name}: cannot serve metrics on {host}:{port}: {exc.strerror}"
        ) from None


async def serve(
    name: str,
    listen: ServiceConfig,
    setup: Setup,
    *,
    tls: TlsConfig | None = None,
    grace: float = DRAIN_GRACE_S,
) -> None:
    """Run a gRPC server until SIGTERM or SIGINT, then drain in-flight RPCs.

    With `listen.metrics_port` set, Prometheus metrics are served on that port too.

    `setup` adds the servicers and returns their full service names, which are
    published in health checking and reflection.
    """
    host, port = listen.host, listen.port
    if listen.metrics_port:
        start_metrics(name, host, listen.metrics_port)
    server = grpc.aio.server(options=SERVER_OPTIONS, interceptors=[RequestIds()])
    service_names = list(await setup(server))
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(
        [
            *service_names,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ],
        server,
    )
    try:
        bound = listen_on(server, f"{host}:{port}", tls)
    except RuntimeError:
        raise SystemExit(f"meshgate {name}: cannot listen on {host}:{port}") from None
    await server.start()
    for service in ["", *service_names]:
        await health.set(service, health_pb2.HealthCheckResponse.SERVING)
    log.info("listening", extra={"service": name, "address": f"{host}:{bound}"})

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("draining", extra={"service": name, "grace_s": grace})
    await health.enter_graceful_shutdown()
    await server.stop(grace)
    log.info("stopped", extra={"service": name})
