"""Client-side rate limiting: respected, not discovered (docs/design.md, "Sync rules", 8).

A token bucket per endpoint class (writes, search, meter events), shared by every request of a
run. A 429 from the target halves the class's rate for everyone (multiplicative decrease); it
climbs back by a quarter of the configured rate per second without another 429 (additive
increase). No limiter package we could find adapts its rate this way, hence this small class.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class LimiterStats:
    acquired: int = 0
    waited_s: float = 0.0
    throttled: int = 0


@dataclass
class AdaptiveLimiter:
    rate: float  # the configured requests per second
    burst: float = 1.0
    min_rate: float = 0.5
    clock: Callable[[], float] = time.monotonic
    stats: LimiterStats = field(default_factory=LimiterStats)

    def __post_init__(self) -> None:
        self.min_rate = max(self.min_rate, self.rate / 20)
        self.current = self.rate
        # One token to start, then paced: a client that opens with a full burst meets the
        # server's bucket at the same moment, and any jitter in arrival is a 429.
        self._tokens = min(1.0, self.burst)
        self._stamp = self.clock()
        self._last_throttle = float("-inf")
        self._paused_until = float("-inf")
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        # One waiter at a time computes its slot, so the bucket is never overdrawn.
        async with self._lock:
            while True:
                pause = self._paused_until - self.clock()
                if pause > 0:
                    self.stats.waited_s += pause
                    await asyncio.sleep(pause)
                self._refill()
                # A tolerance: refills sum floats, and 0.9999999999999998 of a token must not
                # mean a 1e-17 s wait that no clock can even tell apart from now.
                if self._tokens >= 1.0 - 1e-9:
                    self._tokens = max(0.0, self._tokens - 1.0)
                    self.stats.acquired += 1
                    return
                wait = (1.0 - self._tokens) / self.current
                self.stats.waited_s += wait
                await asyncio.sleep(wait)

    def throttled(self) -> None:
        """The target answered 429: slow the whole class down, once per second at most.

        Many requests in flight meet the same overload and come back 429 together: that is one
        signal, not thirty, so one halving (as TCP halves once per round trip)."""
        self.stats.throttled += 1
        self._refill()
        now = self.clock()
        if now - self._last_throttle >= 1.0:
            self.current = max(self.min_rate, self.current / 2)
            self._last_throttle = now
        self._tokens = min(self._tokens, 0.0)

    def pause(self, seconds: float) -> None:
        """No request leaves for `seconds`: the target said its window is spent (a remaining
        count of zero, a 429 naming a window) and when it frees up."""
        self._paused_until = max(self._paused_until, self.clock() + seconds)
        self._tokens = min(self._tokens, 0.0)

    def current_rate(self) -> float:
        """The rate in force now: the configured one, or what a 429 left of it, recovered by a
        quarter of the configured rate for each second since."""
        self._refill()
        return self.current

    def _refill(self) -> None:
        now = self.clock()
        elapsed = now - self._stamp
        self._stamp = now
        if self.current < self.rate and now - self._last_throttle > 1.0:
            self.current = min(self.rate, self.current + self.rate * 0.25 * elapsed)
        self._tokens = min(self.burst, self._tokens + elapsed * self.current)
