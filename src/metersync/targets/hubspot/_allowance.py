"""HubSpot's daily request allowance, kept: `daily_reserve` is left for the account's other
integrations, and once the allowance is spent every call fails as fatal: the run stops and the
next one after HubSpot's reset goes on."""

from __future__ import annotations

from dataclasses import dataclass

from metersync.sync.ports import ErrorKind
from metersync.targets.hubspot._errors import HubSpotError


@dataclass
class DailyAllowance:
    """HubSpot's daily request allowance as the headers last told it (before any answer: the
    configured limit). Below the reserve, no call leaves."""

    limit: int
    reserve: int
    remaining: int | None = None

    def check(self) -> None:
        left = self.limit if self.remaining is None else self.remaining
        if left <= self.reserve:
            raise HubSpotError(
                ErrorKind.FATAL,
                f"HubSpot's daily API allowance is spent ({left} of {self.limit} left, "
                f"{self.reserve} kept in reserve); syncing resumes after HubSpot's daily reset",
            )
