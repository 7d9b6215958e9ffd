"""Usage at scale: every figure of the issue "Usage at scale", from its two parts.

- `bench/usage_history.py`: a store holding a long history (10,000,000 events over 30 days,
  10,000 customers, SUM, COUNT and UNIQUE_COUNT meters) on SQLite and PostgreSQL: the no-op
  tick and its ratio to a small history, the tick after new events, the plan of the first push,
  ingest into the full store, and each step's peak RSS.
- `bench/usage_throughput.py`: meter-event throughput at 200 ms of latency (v1 at 1,000/s,
  the v2 stream from one process) and 100,000 customers × 5 meters pushed end to end, checked
  against figures computed from the generated events.

This runs both, each in its own process (they print their own figures and the machine, and
write bench/results/usage_history.* and usage_throughput.*), then writes bench/results/usage.md:
the verdict of each, with a pointer to its page. Exit 0 when both met every target.

    .venv/bin/python bench/usage.py            # both, full size: about an hour and a half
    .venv/bin/python bench/usage.py --quick    # both at tiny sizes, a minute; writes nothing
    .venv/bin/python bench/usage.py -- --window 1h   # after --: passed to usage_history.py
    .venv/bin/python bench/usage.py --summary-only   # usage.md from the parts' last results
"""

from __future__ import annotations

import argparse
import datetime as dt
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
# The history's window: daily windows, so that the first push of 10M events plans 640,000
# reports (hourly windows make it 5.4 million; the plan's rate is the same, see docs/scale.md).
HISTORY_DEFAULTS = ["--db", "both", "--window", "1d"]


def run(script: str, arguments: list[str]) -> tuple[int, float]:
    started = time.monotonic()
    code = subprocess.call([sys.executable, str(HERE / script), *arguments])
    return code, time.monotonic() - started


def verdict(page: Path) -> str:
    """The lines of a part's results page that give its verdict."""
    if not page.exists():
        return "no results written"
    lines = page.read_text().splitlines()
    keep = [line for line in lines if "PASS" in line or "FAIL" in line or "VERDICT" in line]
    return "\n".join(keep[:40]) or "no verdict found"


def history_sections() -> list[str]:
    """One section per history page: usage_history.md, and any run of one database alone kept
    beside it (usage_history-sqlite.md: a run on code the combined run predates)."""
    sections: list[str] = []
    for page in sorted(RESULTS.glob("usage_history*.md")):
        sections += [f"## History: [{page.name}]({page.name})", "", verdict(page), ""]
    return sections or ["## History", "", "no results written", ""]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes; writes nothing")
    parser.add_argument(
        "--summary-only",
        action="store_true",
        help="run nothing: write usage.md from the parts' results as they are (each part run "
        "on its own, as their pages say)",
    )
    parser.add_argument("history_args", nargs="*", help="after --: for usage_history.py")
    args = parser.parse_args()
    quick = ["--quick"] if args.quick else []
    history = throughput = 0
    ran = ""
    if not args.summary_only:
        history, history_s = run(
            "usage_history.py", [*HISTORY_DEFAULTS, *quick, *args.history_args]
        )
        throughput, throughput_s = run("usage_throughput.py", quick)
        ran = f" (history: exit {history}, {history_s:.0f} s; throughput: exit {throughput}, "
        ran += f"{throughput_s:.0f} s)"
        if args.quick:
            return int(bool(history or throughput))
    stamp = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    how = "--summary-only" if args.summary_only else ""
    page = [
        "# Usage at scale",
        "",
        f"Written {stamp} by `python bench/usage.py {how}`{ran}: the verdicts of its two "
        "parts; each page gives its run's command, machine line and load.",
        "",
        *history_sections(),
        "## Throughput: [usage_throughput.md](usage_throughput.md)",
        "",
        verdict(RESULTS / "usage_throughput.md"),
        "",
    ]
    (RESULTS / "usage.md").write_text("\n".join(page))
    print(f"wrote {RESULTS / 'usage.md'}")
    return int(bool(history or throughput))


if __name__ == "__main__":
    sys.exit(main())
