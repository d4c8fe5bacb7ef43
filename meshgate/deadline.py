"""One request, one deadline: every hop's timeout is what is left of it.

Deadlines are `time.monotonic()` instants. A hop never gets a zero or negative
timeout: a deadline already passed still yields a tiny positive one, so that
the hop fails at once as DEADLINE_EXCEEDED instead of waiting without bound.
"""

from __future__ import annotations

import math
import time

from meshgate.grpcio import Context

MIN_TIMEOUT_S = 0.001


def left(deadline: float, cap: float = math.inf) -> float:
    """Seconds left before `deadline`, at most `cap`."""
    return max(min(cap, deadline - time.monotonic()), MIN_TIMEOUT_S)


def of_call(context: Context, cap: float) -> float:
    """The deadline of a gRPC call being served: the caller's own, at most `cap` from now."""
    remaining = context.time_remaining()
    budget = cap if remaining is None else min(remaining, cap)
    return time.monotonic() + budget
