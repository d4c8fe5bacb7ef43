"""One admitted request's usage record, from admission to its one settlement.

The edge starts the record before `Reserve` (quota keeps a copy under the
lease, for the sweep should this process die) and completes it however the
request ends: answered, failed, or abandoned by the client. `finish` runs once;
the settlement then travels to quota, which prices the record and buffers it
for the ledger in the same atomic step that settles the lease.
"""

from __future__ import annotations

import secrets
import time

from edge import observe
from edge.mesh import Mesh
from meshgate.errors import ApiError
from meshgate.v1 import common_pb2, quota_pb2, usage_pb2

CHAT = usage_pb2.ENDPOINT_CHAT_COMPLETIONS
COMPLETIONS = usage_pb2.ENDPOINT_COMPLETIONS
EMBEDDINGS = usage_pb2.ENDPOINT_EMBEDDINGS
RESPONSES = usage_pb2.ENDPOINT_RESPONSES
# What the record says of a client that hung up first (nginx's convention).
CLIENT_CLOSED = 499


def start_record(
    request_id: str, principal: common_pb2.Principal, model: str, endpoint: int, stream: bool
) -> usage_pb2.UsageRecord:
    return usage_pb2.UsageRecord(
        # The admission's id, named here so that a Reserve retried on another quota
        # replica (after a lost answer) is the same admission, not a second one.
        id=secrets.token_hex(12),
        request_id=request_id,
        started_unix_us=time.time_ns() // 1000,
        key_id=principal.key_id,
        tenant=principal.tenant,
        model=model,
        endpoint=endpoint,  # type: ignore[arg-type]
        stream=stream,
    )


class Meter:
    """Completes and settles one record; every end of a request calls `finish` (once)."""

    def __init__(
        self,
        mesh: Mesh,
        principal: common_pb2.Principal,
        reservation: quota_pb2.ReserveResponse,
        record: usage_pb2.UsageRecord,
    ) -> None:
        self._mesh = mesh
        self._principal = principal
        self._reservation = reservation
        self.record = record
        self._started = time.perf_counter()
        self._done = False

    def served_by(self, model: str) -> None:
        """The model that answered (a fallback, perhaps): the record is billed at its prices."""
        record = self.record
        if model and model != record.model:
            record.requested_model = record.requested_model or record.model
            record.model = model

    def first_token(self) -> None:
        if not self.record.ttft_us:
            self.record.ttft_us = max(int((time.perf_counter() - self._started) * 1e6), 1)

    def cancel(self, usage: common_pb2.Usage, *, replica: str = "") -> None:
        """The client went away before the answer ended: charged what it was sent."""
        self.finish(
            usage, replica=replica, status=CLIENT_CLOSED, outcome=usage_pb2.OUTCOME_CANCELLED
        )

    def finish(
        self,
        usage: common_pb2.Usage,
        *,
        replica: str = "",
        error: ApiError | None = None,
        status: int | None = None,
        outcome: int = usage_pb2.OUTCOME_COMPLETED,
    ) -> None:
        """Close the record: `error` is a failure the client was told of; `status`
        overrides the status the client got (200 for a stream that failed midway)."""
        if self._done:
            return
        self._done = True
        record = self.record
        record.ended_unix_us = time.time_ns() // 1000
        record.latency_us = int((time.perf_counter() - self._started) * 1e6)
        record.prompt_tokens = usage.prompt_tokens
        record.completion_tokens = usage.completion_tokens
        record.cached_tokens = usage.cached_tokens
        record.replica = replica
        if error is not None:
            record.error_code = error.code or error.type
            if outcome == usage_pb2.OUTCOME_COMPLETED:
                outcome = usage_pb2.OUTCOME_FAILED
        record.status = status if status is not None else (error.status if error else 200)
        record.outcome = outcome  # type: ignore[assignment]
        observe.tokens(record.model, usage.prompt_tokens, usage.completion_tokens)
        reservation = self._reservation
        if not reservation.lease_id:
            return  # nothing to settle and nothing to record (an unlimited key, recording off)
        self._mesh.settlements.add(
            quota_pb2.Settlement(
                key_limits=self._principal.limits,
                tenant_limits=self._principal.tenant_limits,
                reserved_tokens=reservation.reserved_tokens,
                reserved_micro_usd=reservation.reserved_micro_usd,
                record=record,
                unreserved=reservation.unreserved,
            )
        )
