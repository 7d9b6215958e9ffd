"""Performance regression check between two revisions: the quick customer-sync and ingest runs.

An architecture refactor moves code between modules and packages; it is meant to change no
performance. This script shows whether it did, by running the two quick benchmarks
(`bench/customers.py --quick` and `bench/ingest.py --quick`) on both sides and comparing their
main figures:

* base: a revision (default `aad80fe`, the commit before the refactor began), checked out as a
  detached git worktree in a temporary directory, removed at the end (also on error or Ctrl-C);
* head: the working tree this script sits in, uncommitted changes included.

Each side runs its own bench scripts against its own code: cwd is that tree and PYTHONPATH is
its src/ (ahead of the venv's editable install, which points at this tree; checked before the
runs), with the same interpreter (this one's). For N rounds (default 3) both sides run, the
order alternating (base first in odd rounds, head first in even ones) so that drift, warm-up
and a burst of load elsewhere hit both alike. A bench script exiting 1 because a target is
missed in --quick mode is a result, recorded as such; a script that writes no results (a
crash) is recorded with the end of its output, and its figures are missing.

Per figure (a case's wall seconds, CPU seconds, requests, peak RSS, efficiency, speedup; each
database's events/s, wall, CPU and subject-creation seconds): the base and head medians over
the rounds, the ratio head/base, the spread (min–max) of each side, and a verdict: "no
regression beyond noise" when the head median is no worse than the base spread widened by 10%
(for lower-is-better figures: head median ≤ 1.1 × base max; for higher-is-better ones: head
median ≥ 0.9 × base min), else "slower". Counts (requests) are lower-is-better: a change in
them is a change of behaviour, not of noise, and the raw figures show it.

    .venv/bin/python bench/regression.py [--base REV] [--rounds 3] [--output DIR]
    .venv/bin/python bench/regression.py --full --rounds 1     # the full sizes, ~10 min a round

The quick runs are small: their figures of tens of milliseconds (a tick of 20 customers, a no-op
of 2,000) are mostly fixed costs (first queries compiled, threads started), which a refactor
can move by a few milliseconds. `--full` runs the benchmarks at the sizes their targets are set
for (5,000 / 100,000 customers; 200,000 events), where what scales shows.

Writes bench/results/regression.json (everything, the raw figures of every run included) and
regression.md (the table), or regression-full.* with --full; exits 0 when no figure is slower
and nothing crashed, 1 otherwise.
This script does not import metersync itself.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from emulator import machine, machine_line  # bench/ is on sys.path when run as a script

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DEFAULT_BASE = "aad80fe"
WIDEN = 0.10  # the base spread widened by this share of its bounds
RUN_TIMEOUT_S = 1200.0  # one bench script's run; a hang is a crash, not a result
OUTPUT_TAIL = 8000  # characters of a crashed run's output kept in the report
OK = "no regression beyond noise"
SLOWER = "slower"
NO_DATA = "no data"
SCRIPTS = {"customers": "customers.json", "ingest": "ingest.json"}


@dataclass(frozen=True)
class Figure:
    """One figure read from a bench script's JSON: where, its unit, which way is better."""

    name: str
    benchmark: str
    unit: str
    higher_is_better: bool
    read: Callable[[dict[str, Any]], float | None]


def _get(*path: str) -> Callable[[dict[str, Any]], float | None]:
    def read(report: dict[str, Any]) -> float | None:
        node: Any = report
        for key in path:
            if not isinstance(node, dict) or key not in node:
                return None
            node = node[key]
        return float(node) if isinstance(node, int | float) else None

    return read


def _tick_cpu(report: dict[str, Any]) -> float | None:
    """The median engine CPU of the ticks (the figure customers.py judges), not the CPU of the
    tick with the median wall time."""
    runs = (report.get("tick") or {}).get("runs") or []
    values = [float(r["cpu_s"]) for r in runs if isinstance(r.get("cpu_s"), int | float)]
    return statistics.median(values) if values else None


def _ingest(database: str, key: str) -> Callable[[dict[str, Any]], float | None]:
    def read(report: dict[str, Any]) -> float | None:
        db = (report.get("databases") or {}).get(database) or {}
        values = [float(r[key]) for r in db.get("runs") or [] if key in r]
        return statistics.median(values) if values else None

    return read


def _figures() -> list[Figure]:
    lower, higher = False, True
    figures = [
        Figure("cold sync: wall", "customers", "s", lower, _get("cold", "wall_s")),
        Figure("cold sync: engine CPU", "customers", "s", lower, _get("cold", "cpu_s")),
        Figure("cold sync: requests", "customers", "req", lower, _get("cold", "requests_total")),
        Figure("cold sync: efficiency", "customers", "", higher, _get("cold", "efficiency")),
        Figure("cold sync: peak RSS", "customers", "MB", lower, _get("cold", "peak_rss_mb")),
        Figure("speedup over the naive loop", "customers", "×", higher, _get("naive", "speedup")),
        Figure("tick (latency 0): wall, median", "customers", "s", lower, _get("tick", "wall_s")),
        Figure("tick (latency 0): engine CPU, median", "customers", "s", lower, _tick_cpu),
        Figure(
            "tick (latency 0): requests", "customers", "req", lower, _get("tick", "requests_total")
        ),
        Figure("tick (latency 0): peak RSS", "customers", "MB", lower, _get("tick", "peak_rss_mb")),
        Figure(
            "tick (realistic latency): wall",
            "customers",
            "s",
            lower,
            _get("tick_realistic", "wall_s"),
        ),
        Figure(
            "tick (realistic latency): engine CPU",
            "customers",
            "s",
            lower,
            _get("tick_realistic", "cpu_s"),
        ),
        Figure("no-op full: wall", "customers", "s", lower, _get("noop", "wall_s")),
        Figure("no-op full: engine CPU", "customers", "s", lower, _get("noop", "cpu_s")),
        Figure("no-op full: requests", "customers", "req", lower, _get("noop", "requests_total")),
        Figure("no-op full: peak RSS", "customers", "MB", lower, _get("noop", "peak_rss_mb")),
    ]
    for db in ("sqlite", "postgresql"):
        figures += [
            Figure(f"ingest {db}: events/s", "ingest", "ev/s", higher, _ingest(db, "events_per_s")),
            Figure(f"ingest {db}: wall", "ingest", "s", lower, _ingest(db, "wall_s")),
            Figure(f"ingest {db}: CPU", "ingest", "s", lower, _ingest(db, "cpu_s")),
            Figure(
                f"ingest {db}: subject creation",
                "ingest",
                "s",
                lower,
                _ingest(db, "subject_creation_s"),
            ),
        ]
    return figures


FIGURES = _figures()


# -- the two trees --------------------------------------------------------------------------------


def git(*args: str, cwd: Path = ROOT) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def load_average() -> list[float] | None:
    with contextlib.suppress(OSError):
        return [round(x, 2) for x in os.getloadavg()]
    return None


@contextlib.contextmanager
def worktree(rev: str, scratch: Path) -> Iterator[Path]:
    """A detached worktree of `rev` under `scratch`, removed on the way out whatever happens."""
    path = scratch / "base-tree"
    git("worktree", "add", "--detach", "--quiet", str(path), rev)
    try:
        yield path
    finally:
        done = subprocess.run(
            ["git", "worktree", "remove", "--force", str(path)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            print(f"WARNING: git worktree remove {path}: {done.stderr.strip()}", flush=True)


def environment(tree: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(tree / "src")}


def imported_from(tree: Path) -> str:
    """Where `import metersync` resolves with the tree's environment (must be the tree's src/)."""
    done = subprocess.run(
        [sys.executable, "-c", "import metersync; print(metersync.__file__)"],
        cwd=tree,
        env=environment(tree),
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def fingerprint(tree: Path) -> str:
    """The tree's code as run: its commit and a digest of its uncommitted changes (src, bench)."""
    diff = subprocess.run(
        ["git", "diff", "HEAD", "--", "src", "bench"],
        cwd=tree,
        capture_output=True,
        check=True,
    ).stdout
    untracked = git("ls-files", "--others", "--exclude-standard", "--", "src", cwd=tree)
    digest = hashlib.sha256(diff + untracked.encode()).hexdigest()[:12]
    return f"{git('rev-parse', '--short', 'HEAD', cwd=tree)}+{digest}"


def describe_tree(label: str, tree: Path, rev: str) -> dict[str, Any]:
    changes = git("status", "--porcelain", "--", "src", "bench", cwd=tree).splitlines()
    return {
        "label": label,
        "rev": rev,
        "commit": git("rev-parse", "HEAD", cwd=tree),
        "subject": git("log", "-1", "--format=%s", cwd=tree)[:120],
        "path": str(tree) if label == "head" else "(temporary worktree)",
        "uncommitted_changes": [line.strip() for line in changes],
        "metersync_imported_from": imported_from(tree),
    }


# -- one run --------------------------------------------------------------------------------------


def run_quietly(argv: list[str], tree: Path) -> tuple[int | None, str]:
    """Run `argv` in `tree`, output captured: (exit code, or None after a timeout; output).

    Interrupted (Ctrl-C, SIGTERM, the timeout), the bench script is sent SIGTERM and given time
    to stop its own emulator and workers before it is killed.
    """
    with subprocess.Popen(
        argv,
        cwd=tree,
        env=environment(tree),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as proc:
        try:
            out, _ = proc.communicate(timeout=RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            stop(proc)
            out, _ = proc.communicate()
            return None, f"timed out after {RUN_TIMEOUT_S:g} s\n{out}"
        except BaseException:
            stop(proc)
            raise
        return proc.returncode, out


def stop(proc: subprocess.Popen[str], grace_s: float = 15.0) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run_bench(tree: Path, script: str, output: Path, *, full: bool = False) -> dict[str, Any]:
    """`python bench/<script>.py [--quick] --output <output>` in `tree`; its report, or a
    crash. `full`: the benchmark at its own sizes (minutes), not its quick smoke run."""
    output.mkdir(parents=True, exist_ok=True)
    size = [] if full else ["--quick"]
    argv = [sys.executable, f"bench/{script}.py", *size, "--output", str(output)]
    load = load_average()
    started = time.monotonic()
    code, out = run_quietly(argv, tree)
    elapsed = round(time.monotonic() - started, 1)
    (output / f"{script}.log").write_text(out)
    path = output / SCRIPTS[script]
    run: dict[str, Any] = {
        "exit_code": code,
        "seconds": elapsed,
        "load_average_at_start": load,
    }
    report: dict[str, Any] | None = None
    if code in (0, 1) and path.exists():
        with contextlib.suppress(ValueError):
            report = json.loads(path.read_text())
    if report is None:
        run["crashed"] = True
        run["output_tail"] = out[-OUTPUT_TAIL:]
        return run
    run["result"] = report.get("result")
    read = {f.name: f.read(report) for f in FIGURES if f.benchmark == script}
    run["figures"] = {name: value for name, value in read.items() if value is not None}
    if script == "customers":
        run["targets"] = {r["metric"]: r["result"] for r in report.get("verdict", [])}
        run["engine_commit"] = (report.get("source") or {}).get("commit")
    else:
        run["targets"] = {
            name: db.get("result") for name, db in (report.get("databases") or {}).items()
        }
        not_run = {n: db["not_run"] for n, db in report["databases"].items() if db.get("not_run")}
        if not_run:
            run["not_run"] = not_run
    run["report"] = report
    return run


# -- the comparison -------------------------------------------------------------------------------


def _spread(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {
        "min": min(values),
        "median": statistics.median(values),
        "max": max(values),
    }


def compare(figure: Figure, base: list[float], head: list[float]) -> dict[str, Any]:
    b, h = _spread(base), _spread(head)
    row: dict[str, Any] = {
        "figure": figure.name,
        "benchmark": figure.benchmark,
        "unit": figure.unit,
        "better": "higher" if figure.higher_is_better else "lower",
        "base": b,
        "head": h,
        "base_runs": base,
        "head_runs": head,
    }
    if b is None or h is None:
        missing = " and ".join(side for side, s in (("base", b), ("head", h)) if s is None)
        row.update(ratio=None, verdict=NO_DATA, note=f"no figure from {missing}")
        return row
    row["ratio"] = round(h["median"] / b["median"], 3) if b["median"] else None
    if figure.higher_is_better:
        bound = b["min"] * (1 - WIDEN)
        ok = h["median"] >= bound
        better = h["median"] > b["max"] * (1 + WIDEN)
    else:
        bound = b["max"] * (1 + WIDEN)
        ok = h["median"] <= bound
        better = h["median"] < b["min"] * (1 - WIDEN)
    row.update(bound=round(bound, 4), verdict=OK if ok else SLOWER, better_beyond_noise=better)
    return row


def _fmt(value: float | None) -> str:
    if value is None:
        return "–"
    if float(value).is_integer():
        return f"{value:,.0f}"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _range(side: dict[str, float] | None) -> str:
    return "–" if side is None else f"{_fmt(side['min'])}–{_fmt(side['max'])}"


def table_rows(rows: list[dict[str, Any]]) -> list[list[str]]:
    out = []
    for r in rows:
        b, h = r["base"], r["head"]
        unit = f" {r['unit']}" if r["unit"] else ""
        out.append(
            [
                f"{r['figure']} ({r['unit'] or 'ratio'}, {r['better']} is better)",
                _fmt(b and b["median"]) + (unit if b else ""),
                _fmt(h and h["median"]) + (unit if h else ""),
                "–" if r["ratio"] is None else f"{r['ratio']:.3f}",
                _range(b),
                _range(h),
                r["verdict"] + (f" ({r['note']})" if r.get("note") else ""),
            ]
        )
    return out


HEADER = ["figure", "base median", "head median", "head/base", "base spread", "head spread"]
HEADER += ["verdict"]


def print_table(rows: list[dict[str, Any]]) -> None:
    cells = [HEADER, *table_rows(rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(HEADER))]
    for n, row in enumerate(cells):
        print(
            "  ".join(
                c.ljust(w) if i in (0, 6) else c.rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            ).rstrip()
        )
        if n == 0:
            print("  ".join("-" * w for w in widths))


def crashes(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The crashed runs, those that ended alike (tree, script, last line) grouped as one."""
    groups: dict[tuple[str, str, str], dict[str, Any]] = {}
    for r in runs:
        if not r.get("crashed"):
            continue
        lines = r["output_tail"].strip().splitlines()
        key = (r["tree"], r["script"], lines[-1] if lines else "")
        group = groups.setdefault(
            key,
            {
                "tree": r["tree"],
                "script": r["script"],
                "rounds": [],
                "exit_codes": [],
                "output_tail": r["output_tail"],
            },
        )
        group["rounds"].append(r["round"])
        group["exit_codes"].append(r["exit_code"])
    return list(groups.values())


def tracebacks(output: str, limit: int = 60) -> list[str]:
    """A crashed run's tracebacks (all of them: a worker's, then its parent's), else its end."""
    lines = output.strip().splitlines()
    first = next((n for n, line in enumerate(lines) if line.startswith("Traceback")), None)
    return lines[first:][:limit] if first is not None else lines[-12:]


def markdown(report: dict[str, Any]) -> str:
    m, trees = report["machine"], report["trees"]
    base, head = trees["base"], trees["head"]
    slower = [r["figure"] for r in report["comparison"] if r["verdict"] == SLOWER]
    full = report["parameters"].get("full", False)
    lines = [
        "# Regression check: base against head, "
        + ("full-size" if full else "quick")
        + " customer-sync and ingest benchmarks",
        "",
        f"Run {report['date']} with `{report['command']}`, {report['wall_seconds']:.0f} s in all "
        f"({report['parameters']['rounds']} rounds, the order alternating).",
        "",
        f"- base: `{base['commit'][:10]}` ({base['rev']}: {base['subject']})",
        f"- head: `{head['commit'][:10]}` working tree"
        + (
            f", uncommitted: {', '.join(c.split()[-1] for c in head['uncommitted_changes'])}"
            if head["uncommitted_changes"]
            else ""
        )
        + f" ({head['subject']})"
        + (
            f"; **it changed during the run** ({', '.join(head['code_per_run'])}): the head's "
            "figures mix versions"
            if head["changed_during_run"]
            else ""
        ),
        "",
        f"**{report['result']}**: "
        + (f"slower: {', '.join(slower)}. " if slower else "no figure slower beyond noise. ")
        + (
            f"{sum(bool(r.get('crashed')) for r in report['runs'])} of {len(report['runs'])} "
            "runs crashed (below); their figures are missing."
            if report["crashes"]
            else "No run crashed."
        ),
        "",
        "| " + " | ".join(HEADER) + " |",
        "|---|--:|--:|--:|--:|--:|---|",
        *("| " + " | ".join(row) + " |" for row in table_rows(report["comparison"])),
        "",
        f"Verdict: no regression beyond noise when the head median is no worse than the base "
        f"spread widened by {WIDEN:.0%} (lower is better: ≤ {1 + WIDEN:g} × base max; higher is "
        f"better: ≥ {1 - WIDEN:g} × base min). "
        + (
            "Figures of `bench/customers.py` (5,000 customers cold at 200 ± 50 ms and 100/s; "
            "100,000 for the tick and the no-op at latency 0) and `bench/ingest.py` (200,000 "
            "events, three fresh-database runs each on SQLite and PostgreSQL)."
            if full
            else "Figures of `bench/customers.py --quick` (300 customers cold at 200 ± 50 ms and "
            "100/s; 2,000 for the tick and the no-op at latency 0) and `bench/ingest.py --quick` "
            "(20,000 events into a fresh SQLite file and PostgreSQL schema; one run each)."
        ),
        "",
        f"Machine: {m['cpu_model']}, {m['cpu_count']} cores ({m['usable_cpus']} usable), "
        f"{m['memory_gib']} GiB, {m['python']}, {m['os']}; load average at start "
        f"{m['load_average_at_start']}, at end {report['load_average_at_end']}.",
    ]
    for crash in report["crashes"]:
        tail = tracebacks(crash["output_tail"])
        lines += [
            "",
            f"Crash: {crash['tree']} `bench/{crash['script']}.py`, rounds "
            f"{crash['rounds']}, exit codes {crash['exit_codes']}; the end of its output:",
            "",
            "```",
            *tail,
            "```",
        ]
    return "\n".join(lines) + "\n"


# -- main -----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[1:]),
    )
    parser.add_argument("--base", default=DEFAULT_BASE, help=f"base revision ({DEFAULT_BASE})")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of both sides (default 3)")
    parser.add_argument(
        "--full",
        action="store_true",
        help="the benchmarks at their own sizes (about 10 minutes a round), not --quick; "
        "writes regression-full.json and .md",
    )
    parser.add_argument(
        "--output", type=Path, default=RESULTS, help="where to write regression.json and .md"
    )
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")

    def on_sigterm(*_: Any) -> None:
        raise SystemExit(143)  # unwind, so that the worktree is removed

    signal.signal(signal.SIGTERM, on_sigterm)
    started = time.monotonic()
    info = machine()
    print(machine_line(info), flush=True)
    base_commit = git("rev-parse", "--verify", f"{args.base}^{{commit}}")
    scratch = Path(tempfile.mkdtemp(prefix="bench-regression-"))
    runs: list[dict[str, Any]] = []
    try:
        with worktree(base_commit, scratch) as base_tree:
            trees = {
                "base": describe_tree("base", base_tree, args.base),
                "head": describe_tree("head", ROOT, "working tree"),
            }
            paths = {"base": base_tree, "head": ROOT}
            for label, tree in trees.items():
                print(
                    f"{label}: {tree['commit'][:10]} {tree['subject'][:70]}"
                    + (
                        f" (+{len(tree['uncommitted_changes'])} uncommitted)"
                        if tree["uncommitted_changes"]
                        else ""
                    )
                    + f"; metersync from {tree['metersync_imported_from']}",
                    flush=True,
                )
                expected = paths[label].resolve() / "src"
                if not Path(tree["metersync_imported_from"]).resolve().is_relative_to(expected):
                    raise SystemExit(
                        f"{label}: metersync imports from {tree['metersync_imported_from']}, "
                        f"not from {expected}"
                    )
            for round_ in range(1, args.rounds + 1):
                order = ["base", "head"] if round_ % 2 else ["head", "base"]
                for label in order:
                    sha = trees[label]["commit"][:7]
                    for script in SCRIPTS:
                        output = scratch / f"{label}-{sha}" / str(round_)
                        print(
                            f"round {round_}/{args.rounds}, {label}: bench/{script}.py"
                            + ("" if args.full else " --quick")
                            + " …",
                            end=" ",
                            flush=True,
                        )
                        run = run_bench(paths[label], script, output, full=args.full)
                        code = fingerprint(paths[label])
                        run.update(tree=label, script=script, round=round_, code=code)
                        runs.append(run)
                        print(
                            f"{run['seconds']} s, exit {run['exit_code']}, "
                            + ("CRASHED" if run.get("crashed") else str(run["result"]))
                            + f" (load {run['load_average_at_start']})",
                            flush=True,
                        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    comparison = []
    for figure in FIGURES:
        values = {
            side: [
                r["figures"][figure.name]
                for r in runs
                if r["tree"] == side and figure.name in r.get("figures", {})
            ]
            for side in ("base", "head")
        }
        comparison.append(compare(figure, values["base"], values["head"]))
    crashed = crashes(runs)
    for label, tree in trees.items():
        # The head is a working tree someone may be editing: say so if its code moved.
        tree["code_per_run"] = sorted({r["code"] for r in runs if r["tree"] == label})
        tree["changed_during_run"] = len(tree["code_per_run"]) > 1
        if tree["changed_during_run"]:
            print(
                f"WARNING: the {label} tree's code changed during the run "
                f"({', '.join(tree['code_per_run'])}); its figures mix versions",
                flush=True,
            )
    slower = [r for r in comparison if r["verdict"] == SLOWER]
    result = "SLOWER" if slower else ("INCOMPLETE" if crashed else "NO REGRESSION")
    report: dict[str, Any] = {
        "benchmark": "regression",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(
            ["python", "bench/regression.py", *(sys.argv[1:] if argv is None else argv)]
        ),
        "machine": info,
        "load_average_at_end": load_average(),
        "trees": trees,
        "parameters": {
            "base": args.base,
            "rounds": args.rounds,
            "widen": WIDEN,
            "full": args.full,
            "scripts": [f"bench/{s}.py" + ("" if args.full else " --quick") for s in SCRIPTS],
            "python": sys.executable,
            "pythondontwritebytecode": bool(os.environ.get("PYTHONDONTWRITEBYTECODE")),
        },
        "result": result,
        "comparison": comparison,
        "crashes": crashed,
        "runs": runs,
        "wall_seconds": round(time.monotonic() - started, 1),
    }
    args.output.mkdir(parents=True, exist_ok=True)
    name = "regression-full" if args.full else "regression"
    (args.output / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.output / f"{name}.md").write_text(markdown(report))

    print()
    print_table(comparison)
    for crash in report["crashes"]:
        print(
            f"\nCRASH: {crash['tree']} bench/{crash['script']}.py, rounds {crash['rounds']}, exit "
            f"codes {crash['exit_codes']}:\n" + "\n".join(tracebacks(crash["output_tail"]))
        )
    print(
        f"\nbase {trees['base']['commit'][:10]}, head {trees['head']['commit'][:10]}"
        + (" + uncommitted changes" if trees["head"]["uncommitted_changes"] else "")
        + f"; load average at start {info['load_average_at_start']}, at end "
        f"{report['load_average_at_end']}"
    )
    print(
        f"{result}: {len(slower)} of {len(comparison)} figures slower, "
        f"{sum(bool(r.get('crashed')) for r in runs)} of {len(runs)} runs crashed; "
        f"{report['wall_seconds']} s in all; wrote "
        f"{args.output / name}.json and .md",
        flush=True,
    )
    return 0 if result == "NO REGRESSION" else 1


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    sys.exit(130)
