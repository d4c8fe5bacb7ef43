"""Optional OpenTelemetry tracing: one request is one trace, from the edge through every hop
to the engine."""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("opentelemetry.instrumentation.grpc") is None,
    reason='tracing needs `pip install "meshgate[tracing]"` (scripts/test.sh installs it)',
)


def test_one_request_is_one_trace_across_the_mesh(start_mesh: Any, tmp_path: Path) -> None:
    spans_file = tmp_path / "spans.jsonl"
    mesh = start_mesh(tracing={"enabled": True, "file": str(spans_file)})
    try:
        with httpx.Client(
            base_url=mesh.origin, timeout=30, headers={"Authorization": f"Bearer {mesh.api_key}"}
        ) as http:
            response = http.post(
                "/v1/chat/completions",
                json={
                    "model": "meshgate/reference-pro",
                    "messages": [{"role": "user", "content": "hi"}],
                    "max_tokens": 3,
                },
            )
        assert response.status_code == 200
        deadline = time.monotonic() + 10
        while True:
            spans = (
                [json.loads(line) for line in spans_file.read_text().splitlines()]
                if spans_file.exists()
                else []
            )
            roots = [s for s in spans if s["service"] == "edge" and s["name"] == "chat_completions"]
            if roots:
                trace = [s for s in spans if s["trace_id"] == roots[0]["trace_id"]]
                services = {s["service"] for s in trace}
                if {
                    "edge",
                    "validation",
                    "quota",
                    "router",
                    "engine",
                } <= services or time.monotonic() > deadline:
                    break
            assert time.monotonic() < deadline, f"no edge span in {spans}"
            time.sleep(0.2)
    finally:
        assert mesh.stop() == 0
    assert {"edge", "validation", "quota", "router", "engine"} <= services, services
    by_id = {s["span_id"]: s for s in trace}
    engine = next(s for s in trace if s["service"] == "engine")
    # The engine's span hangs under the router's call, which hangs under the edge's request.
    chain = []
    node: dict[str, Any] | None = engine
    while node is not None:
        chain.append(node["service"])
        node = by_id.get(node["parent_id"]) if node["parent_id"] else None
    assert chain[0] == "engine" and "router" in chain and chain[-1] == "edge", chain
