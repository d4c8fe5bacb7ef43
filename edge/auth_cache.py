"""Authenticate results, reused for a moment at the edge, revoked at once.

Most traffic reuses a few keys, so asking auth on every request costs a gRPC
round trip for nothing new. The edge keeps a principal for `ttl` seconds, but
only while its watch on auth's key events is live: a revocation or an update
evicts the key the moment auth announces it, a tenant's update evicts every
principal of that tenant (each carries the tenant's limits), and a broken watch
empties the cache and turns it off until the watch is back. Failed
authentications are never cached.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time

import grpc

from meshgate.v1 import auth_pb2, auth_pb2_grpc, common_pb2

log = logging.getLogger("meshgate.edge")

MAX_ENTRIES = 10_000


class AuthCache:
    def __init__(self, ttl_s: float) -> None:
        self._ttl = ttl_s
        self._entries: dict[bytes, tuple[float, common_pb2.Principal]] = {}
        self.live = False

    @staticmethod
    def _slot(authorization: str) -> bytes:
        return hashlib.sha256(authorization.encode()).digest()

    def get(self, authorization: str) -> common_pb2.Principal | None:
        if not self.live:
            return None
        entry = self._entries.get(self._slot(authorization))
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    def put(self, authorization: str, principal: common_pb2.Principal) -> None:
        if not self.live or self._ttl <= 0:
            return
        if len(self._entries) >= MAX_ENTRIES:
            self._entries.clear()
        self._entries[self._slot(authorization)] = (time.monotonic() + self._ttl, principal)

    def evict(self, key_id: str) -> None:
        for slot in [s for s, (_, p) in self._entries.items() if p.key_id == key_id]:
            del self._entries[slot]

    def evict_tenant(self, tenant: str) -> None:
        for slot in [s for s, (_, p) in self._entries.items() if p.tenant == tenant]:
            del self._entries[slot]

    def suspend(self) -> None:
        self.live = False
        self._entries.clear()

    async def watch(self, auth: auth_pb2_grpc.AuthServiceStub) -> None:
        """Follow auth's key events for as long as the edge runs, reconnecting after failures."""
        while True:
            call = auth.WatchKeyEvents(auth_pb2.WatchKeyEventsRequest())
            try:
                async for event in call:
                    if event.key_id:
                        self.evict(event.key_id)
                    elif event.tenant:
                        self.evict_tenant(event.tenant)
                    else:
                        self.live = True
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE:
                    log.warning("auth key watch failed", extra={"error": exc.code().name})
            finally:
                self.suspend()
                call.cancel()
            await asyncio.sleep(0.5)
