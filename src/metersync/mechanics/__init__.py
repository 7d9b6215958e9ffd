"""Mechanisms that the engine and the adapters share, and that know nothing of either: rate
limiting, batching, retry backoff and the vocabulary of failures.

The engine (sync, usage) and the adapters (targets, sources) both import from here; this package
imports nothing of metersync but `errors` and `clock`.
"""

from metersync.mechanics.backoff import backoff
from metersync.mechanics.batching import Batcher
from metersync.mechanics.limiter import AdaptiveLimiter, LimiterStats
from metersync.mechanics.retry import ErrorKind, TargetError, kind_of_status

__all__ = [
    "AdaptiveLimiter",
    "Batcher",
    "ErrorKind",
    "LimiterStats",
    "TargetError",
    "backoff",
    "kind_of_status",
]
