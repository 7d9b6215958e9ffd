"""How long a failed item waits before its next attempt."""

from __future__ import annotations

import random
from datetime import timedelta


def backoff(attempts: int, *, base_s: float = 30.0, cap_s: float = 3600.0) -> timedelta:
    """Exponential, capped, with jitter so that failures do not retry in lockstep."""
    seconds = min(cap_s, base_s * 2 ** max(0, attempts - 1))
    return timedelta(seconds=seconds * random.uniform(0.8, 1.2))  # noqa: S311 - jitter only
