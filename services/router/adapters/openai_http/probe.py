"""Reads an OpenAI-compatible engine's load from its own `/metrics` (and llama.cpp's `/slots`).

The engine kind is configured (`metrics.kind`) or, by default, detected from the
metric names on the first page that has any we know; once detected it is kept,
so an engine that stops answering later counts as saturated rather than as one
without signals. Each replica's probe has a connection of its own: a slow
metrics page never holds up a request, and the read is bounded by a timeout.
"""

from __future__ import annotations

import urllib.parse
from typing import Any

import orjson

from services.router.adapters.openai_http import exposition, http1, llama_cpp, sglang, vllm
from services.router.adapters.openai_http.engine import _env_proxy
from services.router.signals import Load, ProbeFailed

# The engine kinds whose metrics are read, in the order auto-detection tries them.
KINDS = {vllm.KIND: vllm, sglang.KIND: sglang, llama_cpp.KIND: llama_cpp}
ALL_NAMES = tuple(name for module in KINDS.values() for name in module.NAMES)


def metrics_url(engine_url: str) -> str:
    """The engine's /metrics: at its root, beside (not under) the /v1 of its API."""
    parts = urllib.parse.urlsplit(engine_url.rstrip("/"))
    path = parts.path.removesuffix("/v1")
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path + "/metrics", "", ""))


def parse(text: str, kind: str = "auto", slots: tuple[int, int] | None = None) -> Load | None:
    """The load a /metrics page describes, for `kind` or whichever kind's names it has
    ("auto"); None when it has none we know. ValueError on a malformed page."""
    return _load(exposition.read(text, _names(kind)), kind, slots)


def _names(kind: str) -> tuple[str, ...]:
    return ALL_NAMES if kind == "auto" else KINDS[kind].NAMES


def _load(series: exposition.Series, kind: str, slots: tuple[int, int] | None) -> Load | None:
    for name, module in KINDS.items():
        if kind not in ("auto", name):
            continue
        found = llama_cpp.load(series, slots) if module is llama_cpp else module.load(series)
        if found is not None:
            return found
    return None


class MetricsProbe:
    def __init__(self, engine_url: str, *, kind: str = "auto", url: str = "") -> None:
        self.url = url or metrics_url(engine_url)
        self.kind = kind
        # llama.cpp's /slots, asked for while it answers (a server may turn it off).
        self._slots_url: str | None = self.url.removesuffix("/metrics") + "/slots"
        parts = urllib.parse.urlsplit(self.url)
        origin = f"{parts.scheme}://{parts.netloc}"
        self._pool = http1.Pool(
            http1.Target(origin, _env_proxy(self.url)), {}, limit=2, keepalive_s=60.0
        )

    async def _get(self, url: str, timeout: float) -> tuple[int, bytes]:
        parts = urllib.parse.urlsplit(url)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        try:
            return await self._pool.fetch("GET", path, None, {}, timeout)
        except TimeoutError:
            raise ProbeFailed(f"{url}: no answer within {timeout:g} s") from None
        except http1.HttpError as exc:
            raise ProbeFailed(f"{url}: {exc}") from None

    async def read(self, timeout: float) -> Load | None:
        status, body = await self._get(self.url, timeout)
        if status != 200:
            if self.kind == "auto" and status in (404, 405, 501):
                return None  # no metrics here (yet): balance by our own count
            raise ProbeFailed(f"{self.url}: HTTP {status}")
        try:
            series = exposition.read(body.decode("utf-8", errors="replace"), _names(self.kind))
        except ValueError as exc:
            raise ProbeFailed(f"{self.url}: unparsable ({exc})") from None
        load = _load(series, self.kind, None)
        if load is None:
            if self.kind == "auto":
                return None
            raise ProbeFailed(f"{self.url}: no {self.kind} metrics on the page")
        self.kind = load.kind  # detected: an engine that stops answering is now saturated
        if load.kind == llama_cpp.KIND and self._slots_url:
            slots = await self._slots(timeout)
            if slots is not None:
                load = llama_cpp.load(series, slots)
        return load

    async def _slots(self, timeout: float) -> tuple[int, int] | None:
        assert self._slots_url is not None
        status, body = await self._get(self._slots_url, timeout)
        if status in (404, 501):
            self._slots_url = None  # turned off (`--no-slots`): stop asking
            return None
        if status != 200:
            raise ProbeFailed(f"{self._slots_url}: HTTP {status}")
        try:
            answer: Any = orjson.loads(body)
            return llama_cpp.slot_counts(answer)
        except (orjson.JSONDecodeError, ValueError) as exc:
            raise ProbeFailed(f"{self._slots_url}: {exc}") from None

    async def close(self) -> None:
        await self._pool.close()
