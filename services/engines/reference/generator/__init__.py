"""Deterministic generation for the reference engine: a fake LLM without weights.

Everything here is pure and synchronous so that the gRPC server can answer a
request in one message or stream it from the same plan, and so that tests can
check the invariants without a network:

* Same request (messages or prompt, plus `seed`) -> same output, in any process.
* Text is built from one-token pieces, so a stream of N content chunks bills N
  completion tokens, and usage is always `tokens.count(final text)`.
* Tool-call arguments and structured output are filled from the caller's JSON
  Schema, so clients that validate them succeed.
* Tool choice moves on through the tools, so agent loops end (tools.py).

One module per concept: text.py (vocabulary, seeded randomness, max_tokens and
stop), schema.py (JSON-Schema instances), tools.py (tool choice and calls),
chat.py and completions.py (the two planners), embeddings.py. This package
exports what the server plans with.
"""

from meshgate.billing import LEGACY_DEFAULT_MAX_TOKENS
from services.engines.reference.generator.chat import ChatPlan, plan_chat
from services.engines.reference.generator.completions import (
    TextChoicePlan,
    TextPlan,
    plan_text,
)
from services.engines.reference.generator.embeddings import DEFAULT_DIMENSIONS, EmbedPlan, embed
from services.engines.reference.generator.text import warm_up
from services.engines.reference.generator.tools import InvalidRequest, ToolCallPlan

__all__ = [
    "DEFAULT_DIMENSIONS",
    "LEGACY_DEFAULT_MAX_TOKENS",
    "ChatPlan",
    "EmbedPlan",
    "InvalidRequest",
    "TextChoicePlan",
    "TextPlan",
    "ToolCallPlan",
    "embed",
    "plan_chat",
    "plan_text",
    "warm_up",
]
