"""What an ingest reports: counts, the rejected events and why, the subjects it created."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from metersync.usage.ingest._reasons import quote


@dataclass(frozen=True)
class Rejection:
    """One event not stored: where it is in the input, its id when it has a usable one, why."""

    reason: str
    line: int | None = None  # NDJSON line, from 1 (a single object is line 1 too)
    index: int | None = None  # position in a JSON array or in the events given, from 0
    event_id: str | None = None

    @property
    def where(self) -> str:
        return f"line {self.line}" if self.line is not None else f"index {self.index}"

    def __str__(self) -> str:
        named = f" (id {quote(self.event_id, 80)})" if self.event_id is not None else ""
        return f"{self.where}{named}: {self.reason}"

    def to_json(self) -> dict[str, Any]:
        place = {"line": self.line} if self.line is not None else {"index": self.index}
        return place | {"id": self.event_id, "reason": self.reason}


@dataclass
class IngestReport:
    """received = accepted + duplicates + rejected."""

    received: int = 0
    accepted: int = 0  # stored now
    duplicates: int = 0  # valid, but the same (source, id) was stored before or came earlier
    rejections: list[Rejection] = field(default_factory=list)
    subjects_created: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def rejected(self) -> int:
        return len(self.rejections)

    def to_json(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "rejected": self.rejected,
            "subjects_created": list(self.subjects_created),
            "notes": list(self.notes),
            "rejections": [r.to_json() for r in self.rejections],
        }
