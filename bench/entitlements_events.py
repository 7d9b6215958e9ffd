"""The events of bench/entitlements.py, and what they add up to per calendar month.

One customer with two subjects; a year of events in time order, written straight to NDJSON
bytes a chunk at a time with %-formatting (as bench/usage_history_events.py does: generating
10,000,000 events must cost a small fraction of ingesting them). Of every eleven events, ten
are `prompt` (the SUM meter `tokens`, 1 to 4,000 tokens) and one is `request` (the COUNT meter
`requests`); each names one of MODELS (both meters group by it) and one of the two subjects,
drawn at random.

The same pass adds each event to `Expected`: per calendar month (UTC), the tokens and the
requests of each model, computed from the events themselves and not from anything metersync
stored. Usage periods in the benchmark are calendar months (a MONTH interval anchored on the
first of a month at midnight UTC), so a month's figure is a period's usage.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

SOURCE = "bench/entitlements"
CUSTOMER = "ent-bench"
SUBJECTS = ("ent-bench-app", "ent-bench-batch")
MODELS = ("gpt-4", "gpt-4o", "claude", "llama")
MAX_TOKENS = 4000
REQUEST_EVERY = 11  # position i is a request when i % 11 == 10: ten prompts to a request
SPLIT = "10 in 11 prompt (tokens, SUM), 1 in 11 request (requests, COUNT), models at random"

# Not billed on Stripe (no [meters.stripe]): the service's usage tick has nothing to push, so
# it cannot weigh on what is measured; entitlements read the same usage either way.
METERS_TOML = """
[[meters]]
slug = "tokens"
event_type = "prompt"
aggregation = "SUM"
value_property = "$.tokens"
group_by = { model = "$.model" }

[[meters]]
slug = "requests"
event_type = "request"
aggregation = "COUNT"
group_by = { model = "$.model" }
"""

_HEAD = '{"specversion":"1.0","id":"%s%d","source":"' + SOURCE + '","type":'
_PROMPT = _HEAD + '"prompt","subject":"%s","time":"%s","data":{"tokens":%d,"model":"%s"}}'
_REQUEST = _HEAD + '"request","subject":"%s","time":"%s","data":{"model":"%s"}}'


def customer_record() -> dict[str, object]:
    return {
        "key": CUSTOMER,
        "name": "Entitlements bench customer",
        "usageAttribution": {"subjectKeys": list(SUBJECTS)},
    }


def lines_for(prompts: int) -> int:
    """How many events hold `prompts` prompts (and a request after every ten)."""
    return prompts + prompts // (REQUEST_EVERY - 1)


@dataclass
class Expected:
    """Per month ("YYYY-MM"), the tokens and the requests of each model (MODELS' order)."""

    tokens: dict[str, list[int]] = field(default_factory=dict)
    requests: dict[str, list[int]] = field(default_factory=dict)
    prompts: int = 0
    request_events: int = 0

    def month_tokens(self, month: str, model: str | None = None) -> int:
        found = self.tokens.get(month, [0] * len(MODELS))
        return sum(found) if model is None else found[MODELS.index(model)]

    def month_requests(self, month: str, model: str | None = None) -> int:
        found = self.requests.get(month, [0] * len(MODELS))
        return sum(found) if model is None else found[MODELS.index(model)]

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.__dict__))

    @classmethod
    def load(cls, path: Path) -> Expected:
        return cls(**json.loads(path.read_text()))


@dataclass
class EventStream:
    """`total` events spread evenly, in time order, over [start_s, start_s + span_s); ids are
    `prefix` + position."""

    prefix: str
    total: int
    start_s: int
    span_s: int
    seed: int

    def chunks(self, size: int, expected: Expected) -> Iterator[bytes]:
        """NDJSON, `size` events a chunk; each event is added to `expected` as it is written."""
        rng = random.Random(self.seed)
        draw = rng.random
        prefix, total, start, span = self.prefix, self.total, self.start_s, self.span_s
        seconds = [f"{s:02d}Z" for s in range(60)]
        models, subjects = MODELS, SUBJECTS
        minute = -1
        at_minute = month = ""
        tokens: list[int] = []
        requests: list[int] = []
        for low in range(0, total, size):
            lines = []
            for i in range(low, min(total, low + size)):
                second = start + i * span // total
                if second // 60 != minute:
                    minute = second // 60
                    at_minute = time.strftime("%Y-%m-%dT%H:%M:", time.gmtime(second))
                    if at_minute[:7] != month:
                        month = at_minute[:7]
                        tokens = expected.tokens.setdefault(month, [0] * len(models))
                        requests = expected.requests.setdefault(month, [0] * len(models))
                stamp = at_minute + seconds[second % 60]
                model = int(draw() * 4)
                subject = subjects[int(draw() * 2)]
                if i % REQUEST_EVERY == REQUEST_EVERY - 1:
                    requests[model] += 1
                    expected.request_events += 1
                    lines.append(_REQUEST % (prefix, i, subject, stamp, models[model]))
                else:
                    value = int(draw() * MAX_TOKENS) + 1
                    tokens[model] += value
                    expected.prompts += 1
                    lines.append(_PROMPT % (prefix, i, subject, stamp, value, models[model]))
            lines.append("")
            yield "\n".join(lines).encode()
