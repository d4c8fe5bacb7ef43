"""Legacy completions (`/v1/completions`): one choice per prompt, 16 tokens unless told."""

from __future__ import annotations

from dataclasses import dataclass

from meshgate import tokens

# The engine may be called directly (not through validation, which sets it): the same rule.
from meshgate.billing import LEGACY_DEFAULT_MAX_TOKENS
from meshgate.v1 import inference_pb2
from services.engines.reference.generator.text import (
    at_least,
    limit,
    minimum_length,
    natural_pieces,
    optional_int,
    seeded_rng,
)


@dataclass(frozen=True, slots=True)
class TextChoicePlan:
    """One legacy completion choice; `pieces` concatenate to `text` (echo included)."""

    index: int
    text: str
    pieces: tuple[str, ...]
    finish_reason: str
    completion_tokens: int


@dataclass(frozen=True, slots=True)
class TextPlan:
    """A whole legacy completion answer, one choice per prompt."""

    choices: tuple[TextChoicePlan, ...]
    prompt_tokens: int
    completion_tokens: int


def plan_text(request: inference_pb2.CompletionRequest) -> TextPlan:
    """Plan a legacy completion: one choice per prompt, default max_tokens 16."""
    max_tokens = optional_int(request, "max_tokens")
    if max_tokens is None:
        max_tokens = LEGACY_DEFAULT_MAX_TOKENS
    seed = optional_int(request, "seed")
    choices: list[TextChoicePlan] = []
    prompt_tokens = 0
    for index, prompt in enumerate(request.prompt):
        prompt_tokens += tokens.count(prompt)
        rng = seeded_rng(seed, prompt.encode())
        content = at_least(natural_pieces(rng), rng, minimum_length(request))
        pieces, text, finish = limit(content, max_tokens, request.stop)
        used = tokens.count(text)
        if request.echo and prompt:
            pieces, text = (prompt, *pieces), prompt + text
        choices.append(TextChoicePlan(index, text, pieces, finish, used))
    return TextPlan(tuple(choices), prompt_tokens, sum(c.completion_tokens for c in choices))
