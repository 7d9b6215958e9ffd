"""CLI start-up: the wall time of `metersync --version` and `metersync --help`, each run as a
fresh process the way cron and subprocess-heavy tests run it.

Target: **≤ 0.3 s** for both on the machine the benchmark runs on.

    .venv/bin/python bench/startup.py --label before   # then change things, then
    .venv/bin/python bench/startup.py --label after

Each command is run 2 times to warm the page cache, then N times (default 15), the commands
interleaved so that a burst of load elsewhere hits all alike; the figures are min, median and
max (the median is measured against the target: the machine is shared, the minimum is the best
it can do). For context, the same is measured for a bare interpreter (`python -c pass`), for
`import typer` (the floor below which the CLI cannot go), and for `--help` through click's plain
formatter (TYPER_USE_RICH=0), which shows what typer's rich help costs. When
PYTHONDONTWRITEBYTECODE is set (this project's modules, installed editable, are then compiled at
every start, which an installed package's never are), both commands are also timed with their
bytecode cached in a temporary PYTHONPYCACHEPREFIX. Then `python -X importtime` runs each
command once in process and reports what its imports cost: per top-level package (the sum of
its modules' own times), the slowest modules (their cumulative times), and which heavy modules
(sqlalchemy, stripe, ...) it loaded.

Results: bench/results/cli_startup.json and .md. Each run is stored under its label, and runs
with other labels are kept, so `before` and `after` sit side by side. Exit status 0 when both
medians meet the target, 1 otherwise. This script does not import metersync itself.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from emulator import machine  # bench/ is on sys.path when run as a script

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
TARGET_S = 0.3
MODULES_MARKER = "--- modules loaded:"
CACHED = " (bytecode cached)"
# Modules whose presence after --version or --help means a command's dependencies leaked into
# the CLI's start-up (tests/test_cli_startup.py asserts the same).
HEAVY = (
    "sqlalchemy",
    "stripe",
    "uvicorn",
    "starlette",
    "aiohttp",
    "httpx",
    "pydantic",
    "metersync.store",
    "metersync.testing",
    "metersync.catalog",
    "metersync.targets",
)


def load_average() -> list[float] | None:
    with contextlib.suppress(OSError):
        return [round(x, 2) for x in os.getloadavg()]
    return None


def versions(python: str) -> dict[str, str]:
    code = (
        "import json\nfrom importlib.metadata import version, PackageNotFoundError\nout = {}\n"
        "for n in ('metersync', 'typer', 'click', 'rich'):\n"
        "    try: out[n] = version(n)\n"
        "    except PackageNotFoundError: pass\n"
        "print(json.dumps(out))"
    )
    done = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True)
    found: dict[str, str] = json.loads(done.stdout)
    return found


def environment(pycache: Path | None) -> dict[str, str]:
    """The environment of the measured processes: this one's, or with bytecode cached."""
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "100"}
    if pycache is not None:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(pycache)
    return env


def time_commands(
    commands: dict[str, tuple[list[str], dict[str, str]]], runs: int, warmup: int
) -> dict[str, dict[str, Any]]:
    """Wall time of each command as a fresh process, interleaved, after `warmup` rounds."""
    times: dict[str, list[float]] = {name: [] for name in commands}
    for round_ in range(warmup + runs):
        for name, (argv, env) in commands.items():
            started = time.perf_counter()
            done = subprocess.run(argv, capture_output=True, env=env, check=False)
            elapsed = time.perf_counter() - started
            if done.returncode != 0:
                raise SystemExit(
                    f"{' '.join(argv)} exited {done.returncode}: {done.stderr.decode()[-2000:]}"
                )
            if round_ >= warmup:
                times[name].append(elapsed)
    return {
        name: {
            "command": " ".join(_short(a) for a in commands[name][0]),
            "runs": len(values),
            "min_s": round(min(values), 4),
            "median_s": round(statistics.median(values), 4),
            "max_s": round(max(values), 4),
            "all_s": [round(v, 4) for v in values],
        }
        for name, values in times.items()
    }


def import_profile(python: str, argv: list[str], top: int, env: dict[str, str]) -> dict[str, Any]:
    """One run under `python -X importtime`: cost per top-level package, slowest modules."""
    code = (
        "import sys\n"
        f"sys.argv = {['metersync', *argv]!r}\n"
        "from metersync.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        f"print({MODULES_MARKER!r}, *sorted(sys.modules))"
    )
    done = subprocess.run(
        [python, "-X", "importtime", "-c", code],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    modules: list[tuple[str, int, int]] = []  # name, self µs, cumulative µs
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        # "import time:       123 |        456 |     package.module" (indented by depth)
        self_us, cumulative_us, name = line.removeprefix("import time:").split("|", 2)
        with contextlib.suppress(ValueError):
            modules.append((name.strip(), int(self_us), int(cumulative_us)))
    loaded = set(done.stdout.rpartition(MODULES_MARKER)[2].split())
    packages: dict[str, int] = defaultdict(int)
    for name, self_us, _ in modules:
        packages[name.split(".")[0]] += self_us
    total_us = sum(self_us for _, self_us, _ in modules)
    slowest = sorted(modules, key=lambda m: m[2], reverse=True)[:top]
    return {
        "modules_imported": len(modules),
        "import_total_ms": round(total_us / 1000, 1),
        "by_package_ms": {
            name: round(us / 1000, 1)
            for name, us in sorted(packages.items(), key=lambda kv: kv[1], reverse=True)[:top]
        },
        "slowest_modules_cumulative_ms": {name: round(cum / 1000, 1) for name, _, cum in slowest},
        "heavy_modules_loaded": [
            h for h in HEAVY if any(m == h or m.startswith(h + ".") for m in loaded)
        ],
    }


def _short(arg: str) -> str:
    with contextlib.suppress(ValueError):
        return str(Path(arg).relative_to(ROOT))
    return arg


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# CLI start-up: `metersync --version` and `metersync --help`",
        "",
        f"Target: median ≤ {TARGET_S} s for both. Each figure is the wall time of a fresh "
        "process (`python bench/startup.py --label LABEL`), after warm-up runs; min / median / "
        "max of the runs. The machine is shared, so the load average is shown with each run.",
        "",
        "| label | date | load (1, 5, 15 min) | command | runs | min s | median s | max s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, run in report["runs"].items():
        load = run["load_average_at_start"]
        for name, figures in run["timings"].items():
            lines.append(
                f"| {label} | {run['date']} | {', '.join(map(str, load or []))} | `{name}` | "
                f"{figures['runs']} | {figures['min_s']:.3f} | {figures['median_s']:.3f} | "
                f"{figures['max_s']:.3f} |"
            )
    lines += ["", "Verdict per run:", ""]
    for label, run in report["runs"].items():
        note = f" ({run['note']})" if run.get("note") else ""
        lines.append(f"- **{label}**{note}: {run['verdict']}. Bytecode: {run['bytecode']}.")
    for label, run in report["runs"].items():
        lines += ["", f"## Imports, {label} (`python -X importtime`, one run each)", ""]
        for name, profile in run["imports"].items():
            lines += [
                f"`metersync {name}`: {profile['modules_imported']} modules, "
                f"{profile['import_total_ms']} ms of imports; heavy modules loaded: "
                f"{', '.join(profile['heavy_modules_loaded']) or 'none'}.",
                "",
                "| package (own time of its modules) | ms |",
                "|---|---|",
                *(f"| {pkg} | {ms} |" for pkg, ms in profile["by_package_ms"].items()),
                "",
            ]
    first = next(iter(report["runs"].values()))
    m = first["machine"]
    lines += [
        f"Machine: {m['cpu_model']}, {m['cpu_count']} cores, {m['memory_gib']} GiB, "
        f"{m['python']}, {m['os']}.",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", default="run", help="stored under this name (before, after)")
    parser.add_argument("--runs", type=int, default=15, help="timed runs per command")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs per command first")
    parser.add_argument("--top", type=int, default=12, help="import offenders to report")
    parser.add_argument("--venv", type=Path, default=ROOT / ".venv")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--note", default="", help="stored with the run: what was measured")
    args = parser.parse_args()
    no_bytecode = bool(os.environ.get("PYTHONDONTWRITEBYTECODE"))
    python = str(args.venv / "bin" / "python")
    exe = str(args.venv / "bin" / "metersync")
    started = time.monotonic()
    load_start = load_average()
    print(f"load average at start: {load_start}", flush=True)
    env = environment(None)
    commands = {
        "--version": ([exe, "--version"], env),
        "--help": ([exe, "--help"], env),
        "python -c pass": ([python, "-c", "pass"], env),
        "python -c 'import typer'": ([python, "-c", "import typer"], env),
        # What typer's rich help costs: the same help through click's plain formatter.
        "--help, without rich": ([exe, "--help"], env | {"TYPER_USE_RICH": "0"}),
    }
    with tempfile.TemporaryDirectory(prefix="bench-startup-pyc-") as pycache:
        if no_bytecode:
            # An installed package has its bytecode compiled; this environment compiles the
            # project's modules (an editable install) at every start. Both are shown.
            cached = environment(Path(pycache))
            commands["--version" + CACHED] = ([exe, "--version"], cached)
            commands["--help" + CACHED] = ([exe, "--help"], cached)
        timings = time_commands(commands, args.runs, args.warmup)
    imports = {
        name: import_profile(python, [name], args.top, env) for name in ("--version", "--help")
    }
    medians = {name: timings[name]["median_s"] for name in ("--version", "--help")}
    ok = all(value <= TARGET_S for value in medians.values())
    verdict = (
        ("PASS" if ok else "FAIL")
        + ": median "
        + ", ".join(f"{name} {value:.3f} s" for name, value in medians.items())
    )
    verdict += f" (target ≤ {TARGET_S} s)"
    if no_bytecode:
        verdict += "; with bytecode cached: " + ", ".join(
            f"{name} {timings[name + CACHED]['median_s']:.3f} s" for name in medians
        )
    run = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "note": args.note,
        "machine": machine(),
        "versions": versions(python),
        "load_average_at_start": load_start,
        "bytecode": "not written (PYTHONDONTWRITEBYTECODE is set): modules without a cached "
        "compile are compiled at every start; see the '(bytecode cached)' rows"
        if no_bytecode
        else "written and cached as usual",
        "load_average_at_end": load_average(),
        "parameters": {"runs": args.runs, "warmup": args.warmup},
        "timings": timings,
        "imports": imports,
        "verdict": verdict,
        "wall_seconds": round(time.monotonic() - started, 1),
    }
    path = args.output / "cli_startup.json"
    report: dict[str, Any] = {"benchmark": "cli_startup", "target_s": TARGET_S, "runs": {}}
    if path.exists():
        with contextlib.suppress(ValueError):
            report["runs"] = json.loads(path.read_text()).get("runs", {})
    report["runs"][args.label] = run
    args.output.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    (args.output / "cli_startup.md").write_text(markdown(report))

    print(f"machine: {run['machine']}")
    print(f"{'command':<28} {'min s':>7} {'median s':>9} {'max s':>7}")
    for name, figures in timings.items():
        print(
            f"{name:<28} {figures['min_s']:>7.3f} {figures['median_s']:>9.3f} "
            f"{figures['max_s']:>7.3f}"
        )
    for name, profile in imports.items():
        print(
            f"\nimports of `metersync {name}`: {profile['modules_imported']} modules, "
            f"{profile['import_total_ms']} ms; heavy: "
            f"{', '.join(profile['heavy_modules_loaded']) or 'none'}"
        )
        for pkg, ms in profile["by_package_ms"].items():
            print(f"  {pkg:<30} {ms:>8.1f} ms")
    print(f"\nload average at end: {run['load_average_at_end']}")
    print(f"{verdict}; results in {path} [{args.label}]")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
