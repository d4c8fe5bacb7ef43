"""What a request costs: tokens times the catalog's prices, in exact integers.

A price of P dollars per million tokens is P x 10^6 pico-dollars (1e-12 USD)
per token, an integer for any price the config accepts (at most six decimals),
so a record's cost is exact. Budgets count whole micro-dollars, rounded up per
request, so a budget's counter is never below what the records add up to.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

from meshgate import fallbacks
from meshgate.config import ModelConfig, Pricing
from meshgate.v1 import common_pb2

PICO_PER_MICRO = 10**6
MICRO_PER_USD = 10**6


@dataclass(frozen=True, slots=True)
class Price:
    """Pico-dollars per token (the same number as micro-dollars per million tokens)."""

    input: int = 0
    cached_input: int = 0
    output: int = 0

    @classmethod
    def of(cls, pricing: Pricing) -> Price:
        cached = pricing.cached_input_per_mtok
        return cls(
            input=_per_token(pricing.input_per_mtok),
            cached_input=_per_token(pricing.input_per_mtok if cached is None else cached),
            output=_per_token(pricing.output_per_mtok),
        )

    def cost(self, prompt_tokens: int, cached_tokens: int, completion_tokens: int) -> int:
        """The exact cost in pico-dollars; cached prompt tokens at the cached price."""
        cached = min(max(cached_tokens, 0), prompt_tokens)
        return (
            (prompt_tokens - cached) * self.input
            + cached * self.cached_input
            + completion_tokens * self.output
        )

    def worst_case(self, prompt_tokens: int, completion_allowance: int) -> int:
        """The most a request can cost: no prompt cache hit, every allowed token generated."""
        return (
            prompt_tokens * max(self.input, self.cached_input) + completion_allowance * self.output
        )


def _per_token(usd_per_mtok: Decimal) -> int:
    return int(usd_per_mtok * PICO_PER_MICRO)


def micro_usd(pico: int) -> int:
    """Whole micro-dollars, rounded up: what a budget is charged for `pico`."""
    return -(-pico // PICO_PER_MICRO)


def to_micro_usd(dollars: Decimal) -> int:
    """Exact micro-dollars; a value finer than a micro-dollar is a ValueError, never rounded."""
    micro = dollars * MICRO_PER_USD
    if not micro.is_finite() or micro != micro.to_integral_value():
        raise ValueError(f"{dollars} is not a whole number of micro-dollars")
    return int(micro)


def micro_text(micro: int) -> str:
    """Micro-dollars as dollars with all six places (`12.500000`), so no reader rounds them."""
    return f"{Decimal(micro).scaleb(-6):.6f}"


class PriceBook:
    """The catalog's prices by model id; a model without pricing (or unknown) costs 0."""

    def __init__(self, models: Iterable[ModelConfig]) -> None:
        self._models = {model.id: model for model in models}
        self._prices = {model.id: Price.of(model.pricing) for model in self._models.values()}

    def get(self, model: str) -> Price:
        return self._prices.get(model, _FREE)

    def worst_case(
        self,
        model: str,
        principal: common_pb2.Principal,
        prompt_tokens: int,
        completion_allowance: int,
    ) -> int:
        """The most a request for `model` can cost, whichever model of its fallback chain
        serves it: reserving this keeps a budget whole when a dearer fallback answers."""
        config = self._models.get(model)
        names = (model, *(fallbacks.chain(config, principal) if config else ()))
        return max(self.get(name).worst_case(prompt_tokens, completion_allowance) for name in names)


_FREE = Price()
