"""Throughput of the Stripe emulator: how many simple requests per second it serves.

The target (the issue): the emulator must never be what limits our benchmarks, so it must serve
≥ 1,500 simple requests/s on this machine with latency, faults and rate limits off.

The emulator runs in a subprocess of its own (this script started with --serve), so the load
generator and the server do not share a GIL. Cases:

* httpx: an asyncio httpx.AsyncClient with N concurrent keep-alive connections, sending
  GET /v1/customers/{id} (retrieve) and POST /v1/customers (create, form body).
* raw: the same requests (same headers) from a minimal HTTP/1.1 client on asyncio streams.
  httpx costs the client several times the emulator's CPU per request, so on a 2-core machine
  it saturates its own core first; the raw client is cheap enough to saturate the emulator.
* sdk: the same two calls through stripe-python (what metersync uses) from a few threads;
  reported separately, as the SDK itself costs CPU on the client side.

Each case starts from a reset emulator, warms up, then runs for a fixed duration (and at most a
fixed number of requests). Any non-2xx answer or transport error counts as an error, and each
case is checked against the emulator's own count of answered requests. The CPU both processes
used says which side limited the case. The verdict is the best plain-HTTP (httpx or raw)
throughput against the target. Figures and the machine go to stdout and to
bench/results/emulator.json and emulator.md.

    .venv/bin/python bench/emulator.py               # the full run, about a minute
    .venv/bin/python bench/emulator.py --quick       # a smoke test of a few seconds, no files
    .venv/bin/python bench/emulator.py --profile     # profile the server (cProfile); its
                                                     # figures go to emulator-profile.*
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import datetime as dt
import functools
import io
import json
import os
import platform
import pstats
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

TARGET_RPS = 1500.0
API_KEY = "sk_test_bench"
HOST = "127.0.0.1"
RESULTS_DIR = Path(__file__).resolve().parent / "results"
READY_MARKER = "EMULATOR-READY "
OPERATIONS = ("retrieve", "create")
DIRECT_CLIENTS = (
    "httpx",
    "httpx-shared",
    "raw",
)  # plain HTTP load generators; the verdict is theirs
CLIENTS = ("httpx", "raw", "sdk")


# -- the server subprocess ------------------------------------------------------------------------


def serve(profile_path: str | None) -> None:
    """Run the emulator (latency 0, no faults, no rate limits) until stdin closes or a signal.

    Prints `EMULATOR-READY <url>` on stdout once it listens. With `profile_path`, the emulator's
    event-loop thread runs under cProfile and the stats are dumped there on exit.
    """
    from metersync.testing import StripeEmulator

    profiler = cProfile.Profile() if profile_path else None
    if profiler is not None:
        # cProfile watches one thread: enable it from inside the emulator's loop thread, the
        # first time that thread runs Python code (threading.setprofile applies to new threads).
        def hook(*_: Any) -> None:
            sys.setprofile(None)
            if threading.current_thread().name == "stripe-emulator":
                profiler.enable()

        threading.setprofile(hook)

    emulator = StripeEmulator(host=HOST, port=0, latency_ms=0, jitter_ms=0, faults=())

    def on_ready(running: StripeEmulator) -> None:
        threading.setprofile(None)
        print(READY_MARKER + running.url, flush=True)

        def watch_stdin() -> None:
            # The parent closes our stdin to stop us, or dies (which closes it as well).
            sys.stdin.read()
            os.kill(os.getpid(), signal.SIGTERM)

        threading.Thread(target=watch_stdin, name="stdin-watch", daemon=True).start()

    emulator.serve_forever(on_ready=on_ready)
    if profiler is not None and profile_path:
        profiler.create_stats()
        profiler.dump_stats(profile_path)


@contextlib.contextmanager
def emulator_process(profile_path: Path | None = None) -> Iterator[tuple[str, int]]:
    """Start the emulator subprocess; yield (url, pid); always stop it (also on Ctrl-C)."""
    command = [sys.executable, str(Path(__file__).resolve()), "--serve"]
    if profile_path is not None:
        command += ["--profile-to", str(profile_path)]
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 30
        url = None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            if line.startswith(READY_MARKER):
                url = line[len(READY_MARKER) :].strip()
                break
        if url is None:
            raise RuntimeError(f"the emulator subprocess did not start (exit code {proc.poll()})")
        yield url, proc.pid
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None and proc.stdin is not None:
        with contextlib.suppress(OSError):
            proc.stdin.close()
    for action in (None, proc.terminate, proc.kill):
        if action is not None and proc.poll() is None:
            action()
        try:
            proc.wait(timeout=10)
            return
        except subprocess.TimeoutExpired:
            continue


# -- measuring ------------------------------------------------------------------------------------


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process (Linux /proc), or None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class CaseResult:
    client: str  # httpx | httpx-shared | raw | sdk
    operation: str  # retrieve | create
    concurrency: int  # connections (httpx) or threads (sdk)
    requests: int
    errors: int
    seconds: float
    requests_per_s: float
    latency_ms: dict[str, float]
    server_cpu_percent: float | None  # of one core, while the case ran
    client_cpu_percent: float | None
    server_cpu_us_per_request: float | None
    limited_by: str  # "client" or "emulator" (whichever used ≥ 90% of a core), else "neither"
    server_confirmed: bool | None = None  # the emulator's own count of 2xx answers agrees
    error_samples: list[str] = field(default_factory=list)


def percentiles(samples: list[float]) -> dict[str, float]:
    if not samples:
        return {}
    ordered = sorted(samples)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 3)

    return {
        "p50": at(0.50),
        "p95": at(0.95),
        "p99": at(0.99),
        "max": round(ordered[-1] * 1000, 3),
        "mean": round(sum(ordered) / len(ordered) * 1000, 3),
    }


class Tally:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.errors = 0
        self.error_samples: list[str] = []

    def error(self, what: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 5:
            self.error_samples.append(what)


def finish(
    client: str,
    operation: str,
    concurrency: int,
    tally: Tally,
    seconds: float,
    server_cpu: float | None,
    client_cpu: float,
) -> CaseResult:
    done = len(tally.latencies) + tally.errors
    server_share = None if server_cpu is None or not seconds else server_cpu / seconds
    client_share = client_cpu / seconds if seconds else 0.0
    limited_by = (
        "emulator"
        if server_share is not None and server_share >= 0.9
        else "client"
        if client_share >= 0.9
        else "neither"
    )
    return CaseResult(
        client=client,
        operation=operation,
        concurrency=concurrency,
        requests=done,
        errors=tally.errors,
        seconds=round(seconds, 3),
        requests_per_s=round(done / seconds, 1) if seconds else 0.0,
        latency_ms=percentiles(tally.latencies),
        server_cpu_percent=None if server_cpu is None else round(server_cpu / seconds * 100, 1),
        client_cpu_percent=round(client_cpu / seconds * 100, 1),
        server_cpu_us_per_request=(
            None if server_cpu is None or not done else round(server_cpu / done * 1e6, 1)
        ),
        limited_by=limited_by,
        error_samples=tally.error_samples,
    )


ENDPOINTS = {"retrieve": "customers.retrieve", "create": "customers.create"}


def answered_2xx(url: str, operation: str) -> int:
    """How many 2xx answers the emulator counted for the operation since its last reset."""
    with httpx.Client(base_url=url, timeout=10) as client:
        stats = client.get("/_emulator/stats").json()
    per = stats["endpoints"].get(ENDPOINTS[operation], {})
    return sum(n for status, n in per.items() if status.startswith("2"))


def confirm(url: str, result: CaseResult) -> CaseResult:
    # Warm-up requests count too, so the emulator's figure is at least the measured successes.
    result.server_confirmed = answered_2xx(url, result.operation) >= (
        result.requests - result.errors
    )
    return result


def prepare(url: str) -> str:
    """Reset the emulator and create the customer that retrieve cases fetch; return its id."""
    with httpx.Client(base_url=url, timeout=10) as client:
        client.post("/_emulator/reset").raise_for_status()
        config = client.get("/_emulator/config").json()
        assert config["latency_ms"] == 0 and not config["faults"] and not config["rate_limit"], (
            config
        )
        created = client.post(
            "/v1/customers",
            data={"name": "Bench Customer"},
            headers={"Authorization": f"Bearer {API_KEY}"},
        )
        created.raise_for_status()
        return str(created.json()["id"])


Operation = Callable[[int], Awaitable[None]]


async def _drive(
    operations: Sequence[Operation],
    warmup: float,
    duration: float,
    max_requests: int,
    server_pid: int,
) -> tuple[Tally, float, float | None, float]:
    """Run one worker per operation (each a keep-alive connection's worth of requests, one at a
    time): a warm-up, then the measured part. Returns the tally, seconds and CPU seconds."""
    loop = asyncio.get_running_loop()
    tally = Tally()
    measuring = False
    stop_at = 0.0
    issued = 0

    async def worker(operation: Operation) -> None:
        nonlocal issued
        while loop.time() < stop_at and (not measuring or issued < max_requests):
            if measuring:
                issued += 1
            started = time.perf_counter()
            try:
                await operation(issued)
            except Exception as exc:  # noqa: BLE001 - every failure is an error
                if measuring:
                    tally.error(f"{type(exc).__name__}: {exc}"[:300])
                continue
            if measuring:
                tally.latencies.append(time.perf_counter() - started)

    stop_at = loop.time() + warmup
    await asyncio.gather(*(worker(op) for op in operations))

    measuring = True
    server_before = process_cpu_seconds(server_pid)
    client_before = time.process_time()
    started = time.perf_counter()
    stop_at = loop.time() + duration
    await asyncio.gather(*(worker(op) for op in operations))
    seconds = time.perf_counter() - started
    server_after = process_cpu_seconds(server_pid)
    client_cpu = time.process_time() - client_before
    server_cpu = (
        None if server_before is None or server_after is None else server_after - server_before
    )
    return tally, seconds, server_cpu, client_cpu


async def httpx_case(
    url: str,
    operation: str,
    concurrency: int,
    warmup: float,
    duration: float,
    max_requests: int,
    customer_id: str,
    server_pid: int,
    *,
    shared_pool: bool = False,
) -> CaseResult:
    """`concurrency` keep-alive connections from httpx.AsyncClient: by default one client per
    connection. With `shared_pool`, one client whose pool holds them all: httpcore's pool then
    rescans its connections and wakes every waiting request on each release (encode/httpcore
    #1035), which costs the client more CPU per request the more connections it holds."""
    headers = {"Authorization": f"Bearer {API_KEY}"}
    per_client = concurrency if shared_pool else 1
    limits = httpx.Limits(max_connections=per_client, max_keepalive_connections=per_client)
    clients = [
        httpx.AsyncClient(base_url=url, limits=limits, headers=headers, timeout=30)
        for _ in range(1 if shared_pool else concurrency)
    ]

    def operation_for(client: httpx.AsyncClient) -> Operation:
        async def one(sequence: int) -> None:
            if operation == "retrieve":
                response = await client.get(f"/v1/customers/{customer_id}")
            else:
                response = await client.post("/v1/customers", data={"name": f"Bench {sequence}"})
            if not 200 <= response.status_code < 300:
                raise RuntimeError(f"HTTP {response.status_code}: {response.text[:200]}")

        return one

    operations = [operation_for(clients[i % len(clients)]) for i in range(concurrency)]
    try:
        measured = await _drive(operations, warmup, duration, max_requests, server_pid)
    finally:
        for client in clients:
            await client.aclose()
    name = "httpx-shared" if shared_pool else "httpx"
    return finish(name, operation, concurrency, *measured)


class RawConnection:
    """A minimal HTTP/1.1 keep-alive client on asyncio streams: prebuilt request bytes, the
    response read by its Content-Length. It costs the load generator far less CPU than httpx,
    so the emulator, not the client, is what saturates."""

    def __init__(self, url: str, operation: str, customer_id: str) -> None:
        parsed = httpx.URL(url)
        self.host, self.port = parsed.host, parsed.port or 80
        self.operation = operation
        # The headers httpx sends, so the server parses as much as it does for httpx.
        common = (
            f"Host: {self.host}:{self.port}\r\nAccept: */*\r\nAccept-Encoding: gzip, deflate"
            f"\r\nConnection: keep-alive\r\nUser-Agent: bench-raw/1\r\n"
            f"Authorization: Bearer {API_KEY}\r\n"
        )
        self.get = (f"GET /v1/customers/{customer_id} HTTP/1.1\r\n{common}\r\n").encode()
        self.post_head = (
            "POST /v1/customers HTTP/1.1\r\n" + common + "Content-Type: "
            "application/x-www-form-urlencoded\r\nContent-Length: {length}\r\n\r\n"
        )
        self.streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self.last_body = b""

    def request(self, sequence: int) -> bytes:
        if self.operation == "retrieve":
            return self.get
        body = f"name=Bench+{sequence}".encode()
        return self.post_head.format(length=len(body)).encode() + body

    async def __call__(self, sequence: int) -> None:
        if self.streams is None:
            self.streams = await asyncio.open_connection(self.host, self.port)
        reader, writer = self.streams
        try:
            writer.write(self.request(sequence))
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = None
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if length is None:
                raise RuntimeError("response without Content-Length")
            body = await reader.readexactly(length)
            self.last_body = body
        except BaseException:
            await self.close()
            raise
        if not 200 <= status < 300:
            raise RuntimeError(f"HTTP {status}: {body[:200]!r}")

    async def close(self) -> None:
        if self.streams is not None:
            writer = self.streams[1]
            self.streams = None
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def raw_case(
    url: str,
    operation: str,
    concurrency: int,
    warmup: float,
    duration: float,
    max_requests: int,
    customer_id: str,
    server_pid: int,
) -> CaseResult:
    connections = [RawConnection(url, operation, customer_id) for _ in range(concurrency)]
    try:
        # One checked request through the same connection code: the answer is the customer.
        probe = RawConnection(url, operation, customer_id)
        await probe(0)
        await probe.close()
        answer = json.loads(probe.last_body)
        if answer.get("object") != "customer":
            raise RuntimeError(f"unexpected answer: {probe.last_body[:200]!r}")
        measured = await _drive(connections, warmup, duration, max_requests, server_pid)
    finally:
        for connection in connections:
            await connection.close()
    return finish("raw", operation, concurrency, *measured)


def sdk_case(
    url: str,
    operation: str,
    threads: int,
    warmup: float,
    duration: float,
    max_requests: int,
    customer_id: str,
    server_pid: int,
) -> CaseResult:
    import stripe

    client = stripe.StripeClient(
        API_KEY,
        base_addresses={"api": url, "meter_events": url},
        max_network_retries=0,
        http_client=stripe.HTTPXClient(allow_sync_methods=True, timeout=30),
    )
    lock = threading.Lock()
    tally = Tally()
    state = {"measuring": False, "stop_at": 0.0, "issued": 0}

    def call(sequence: int) -> None:
        if operation == "retrieve":
            client.v1.customers.retrieve(customer_id)
        else:
            client.v1.customers.create({"name": f"Bench {sequence}"})

    def worker() -> None:
        while time.monotonic() < state["stop_at"]:
            with lock:
                measuring = bool(state["measuring"])
                if measuring:
                    if state["issued"] >= max_requests:
                        return
                    state["issued"] += 1
                sequence = int(state["issued"])
            started = time.perf_counter()
            try:
                call(sequence)
            except Exception as exc:  # noqa: BLE001 - every failure is an error
                if measuring:
                    with lock:
                        tally.error(f"{type(exc).__name__}: {exc}"[:300])
                continue
            if measuring:
                elapsed = time.perf_counter() - started
                with lock:
                    tally.latencies.append(elapsed)

    def run_all(seconds: float) -> None:
        state["stop_at"] = time.monotonic() + seconds
        pool = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join(timeout=seconds + 60)

    run_all(warmup)
    state["measuring"] = True
    server_before = process_cpu_seconds(server_pid)
    client_before = time.process_time()
    started = time.perf_counter()
    run_all(duration)
    seconds = time.perf_counter() - started
    server_after = process_cpu_seconds(server_pid)
    client_cpu = time.process_time() - client_before
    server_cpu = (
        None if server_before is None or server_after is None else server_after - server_before
    )
    return finish("sdk", operation, threads, tally, seconds, server_cpu, client_cpu)


# -- the machine ----------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu_model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    memory_gib = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
                break
    load = None
    with contextlib.suppress(OSError):
        load = [round(x, 2) for x in os.getloadavg()]
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "cpu_model": cpu_model,
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable,
        "memory_gib": memory_gib,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "os": platform.platform(),
        "load_average_at_start": load,
    }


def machine_line(info: dict[str, Any]) -> str:
    """machine() in one line, as the bench scripts print it first."""
    return (
        f"Machine: {info['cpu_model']}, {info['cpu_count']} cores ({info['usable_cpus']} usable), "
        f"{info['memory_gib']} GiB, {info['python']}, {info['os']}, load average "
        f"{info['load_average_at_start']}"
    )


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("metersync", "h11", "httpx", "stripe"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "?"
    return found


# -- the run --------------------------------------------------------------------------------------


def describe(result: CaseResult) -> str:
    lat = result.latency_ms
    cpu = (
        f"server CPU {result.server_cpu_percent:5.1f}%  "
        f"client CPU {result.client_cpu_percent:5.1f}%"
        if result.server_cpu_percent is not None
        else ""
    )
    unit = "threads" if result.client == "sdk" else "conns"
    return (
        f"  {result.client:12} {result.operation:8} {result.concurrency:3} {unit:7} "
        f"{result.requests_per_s:8.1f} req/s  "
        f"p50 {lat.get('p50', 0):7.2f} ms  p95 {lat.get('p95', 0):7.2f} ms  "
        f"p99 {lat.get('p99', 0):7.2f} ms  errors {result.errors}  {cpu}  "
        f"limited by {result.limited_by}"
        + ("" if result.server_confirmed is not False else "  EMULATOR COUNT DISAGREES")
    )


def run_cases(args: argparse.Namespace, url: str, pid: int) -> list[CaseResult]:
    results: list[CaseResult] = []
    direct: dict[str, Callable[..., Coroutine[Any, Any, CaseResult]]] = {
        "httpx": functools.partial(httpx_case, shared_pool=args.httpx_pool == "shared"),
        "raw": raw_case,
    }
    for client in ("httpx", "raw"):
        if client not in args.clients:
            continue
        for operation in OPERATIONS:
            for concurrency in args.concurrency:
                customer_id = prepare(url)
                result = asyncio.run(
                    direct[client](
                        url,
                        operation,
                        concurrency,
                        args.warmup,
                        args.duration,
                        args.max_requests,
                        customer_id,
                        pid,
                    )
                )
                confirm(url, result)
                print(describe(result), flush=True)
                results.append(result)
    if "sdk" in args.clients:
        for operation in OPERATIONS:
            for threads in args.sdk_threads:
                customer_id = prepare(url)
                result = sdk_case(
                    url,
                    operation,
                    threads,
                    args.warmup,
                    args.sdk_duration,
                    args.max_requests,
                    customer_id,
                    pid,
                )
                confirm(url, result)
                print(describe(result), flush=True)
                results.append(result)
    return results


def verdict(results: list[CaseResult]) -> dict[str, Any]:
    clean = [r for r in results if r.client in DIRECT_CLIENTS and r.errors == 0]
    errors = sum(r.errors for r in results)
    disagreements = sum(1 for r in results if r.server_confirmed is False)
    best = max(clean, key=lambda r: r.requests_per_s, default=None)
    best_per_op = {
        op: max((r.requests_per_s for r in clean if r.operation == op), default=0.0)
        for op in OPERATIONS
    }
    best_rps = best.requests_per_s if best else 0.0
    passed = best_rps >= TARGET_RPS and errors == 0 and disagreements == 0
    httpx_best = max(
        (r for r in results if r.client.startswith("httpx") and r.errors == 0),
        key=lambda r: r.requests_per_s,
        default=None,
    )
    return {
        "target_requests_per_s": TARGET_RPS,
        "best_requests_per_s": best_rps,
        "best_case": (
            None if best is None else f"{best.client} {best.operation}, {best.concurrency} conns"
        ),
        "best_per_operation": best_per_op,
        "errors": errors,
        "count_disagreements": disagreements,
        "best_httpx": None
        if httpx_best is None
        else {
            "requests_per_s": httpx_best.requests_per_s,
            "case": f"{httpx_best.operation}, {httpx_best.concurrency} conns",
            "server_cpu_percent": httpx_best.server_cpu_percent,
            "client_cpu_percent": httpx_best.client_cpu_percent,
            "limited_by": httpx_best.limited_by,
        },
        "result": "PASS" if passed else "FAIL",
    }


def verdict_line(v: dict[str, Any]) -> str:
    per_op = ", ".join(f"{op} {rps:.0f}" for op, rps in v["best_per_operation"].items())
    return (
        f"VERDICT: {v['result']}: best simple-request throughput {v['best_requests_per_s']:.0f} "
        f"req/s ({v['best_case']}) vs target {v['target_requests_per_s']:.0f} req/s "
        f"[best per operation: {per_op}; errors: {v['errors']}]"
    )


def httpx_note(v: dict[str, Any]) -> str | None:
    best = v.get("best_httpx")
    if best is None:
        return None
    return (
        f"httpx.AsyncClient alone reached {best['requests_per_s']:.0f} req/s ({best['case']}); "
        f"client CPU {best['client_cpu_percent']}%, emulator CPU {best['server_cpu_percent']}% "
        f"of a core: limited by {best['limited_by']}"
    )


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    v = report["verdict"]
    p = report["parameters"]
    lines = [
        "# Emulator throughput",
        "",
        f"Run {report['date']} with `{report['command']}`.",
        "",
        f"**{v['result']}**: best simple-request throughput **{v['best_requests_per_s']:.0f} "
        f"req/s** ({v['best_case']}) against the target of {v['target_requests_per_s']:.0f} "
        f"req/s; {v['errors']} errors.",
        "",
        *([f"Note: {httpx_note(v)}.", ""] if httpx_note(v) else []),
        f"Machine: {m['cpu_model']}, {m['cpu_count']} cores ({m['usable_cpus']} usable), "
        f"{m['memory_gib']} GiB, {m['python']}, {m['os']}; load average at start "
        f"{m['load_average_at_start']}.",
        "",
        f"Emulator in its own process (latency 0, no faults, no rate limits); each case from a "
        f"reset emulator, {p['warmup_s']} s warm-up, then {p['duration_s']} s (httpx, raw) or "
        f"{p['sdk_duration_s']} s (SDK), at most {p['max_requests']} requests. Latency is seen "
        f"by the client (includes its own overhead and queueing). CPU is % of one core.",
        "",
        "| client | operation | conc. | req/s | p50 ms | p95 ms | p99 ms | errors "
        "| emulator CPU | emulator µs/req | client CPU | limited by |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for r in report["cases"]:
        lat = r["latency_ms"]
        lines.append(
            f"| {r['client']} | {r['operation']} | {r['concurrency']} | "
            f"{r['requests_per_s']:.0f} | {lat.get('p50', 0):.2f} | {lat.get('p95', 0):.2f} | "
            f"{lat.get('p99', 0):.2f} | {r['errors']} | {r['server_cpu_percent']}% | "
            f"{r['server_cpu_us_per_request']} | {r['client_cpu_percent']}% | "
            f"{r['limited_by']} |"
        )
    lines += [
        "",
        "httpx: asyncio httpx.AsyncClient, one keep-alive connection per concurrent request, "
        f"{'one client shared by all' if p['httpx_pool'] == 'shared' else 'one client each'}. "
        "raw: a minimal HTTP/1.1 client on asyncio streams (same headers as httpx, prebuilt "
        "bytes), cheap enough that the emulator rather than the client saturates. "
        "sdk: stripe-python's StripeClient with HTTPXClient (sync), shared by the threads. "
        "Limited by: whichever side used ≥ 90% of a core. Every case was checked against the "
        "emulator's own count of 2xx answers.",
    ]
    if report.get("profile"):
        lines += ["", "## Server profile (cProfile, top by own time)", "", "```"]
        lines += report["profile"]["top"].rstrip().splitlines()
        lines += ["```"]
    return "\n".join(lines) + "\n"


def profile_summary(path: Path, limit: int) -> dict[str, Any]:
    def top(order: str) -> str:
        out = io.StringIO()
        pstats.Stats(str(path), stream=out).strip_dirs().sort_stats(order).print_stats(limit)
        return _trim_pstats(out.getvalue())

    return {"top": top("tottime"), "top_cumulative": top("cumulative")}


def _trim_pstats(text: str) -> str:
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if "ncalls" in line:
            return "\n".join(lines[i:]) + "\n"
    return text


def write_results(report: dict[str, Any], directory: Path, stem: str) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    json_path = directory / f"{stem}.json"
    md_path = directory / f"{stem}.md"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    md_path.write_text(markdown(report))
    return [json_path, md_path]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    def int_list(text: str) -> list[int]:
        values = [int(x) for x in text.replace(",", " ").split()]
        if not values or any(v < 1 for v in values):
            raise argparse.ArgumentTypeError("give positive integers, e.g. 8,32,64")
        return values

    def client_list(text: str) -> list[str]:
        values = [x for x in text.replace(",", " ").split()]
        if not values or any(v not in CLIENTS for v in values):
            raise argparse.ArgumentTypeError(f"choose among {', '.join(CLIENTS)}")
        return values

    parser = argparse.ArgumentParser(
        description="Measure the Stripe emulator's throughput (target ≥ 1,500 simple req/s)."
    )
    parser.add_argument(
        "--duration", type=float, default=3.0, help="seconds per httpx or raw case (default 3)"
    )
    parser.add_argument(
        "--concurrency",
        type=int_list,
        default=[8, 32, 64],
        help="httpx and raw connections, comma-separated (default 8,32,64)",
    )
    parser.add_argument(
        "--clients",
        type=client_list,
        default=list(CLIENTS),
        help="load generators to run, comma-separated (default httpx,raw,sdk)",
    )
    parser.add_argument(
        "--httpx-pool",
        choices=("per-connection", "shared"),
        default="per-connection",
        help="one AsyncClient per connection (default), or one shared by all connections",
    )
    parser.add_argument(
        "--sdk-threads",
        type=int_list,
        default=[4],
        help="stripe SDK threads, comma-separated (default 4)",
    )
    parser.add_argument(
        "--sdk-duration", type=float, default=None, help="seconds per SDK case (default: 3)"
    )
    parser.add_argument("--warmup", type=float, default=None, help="seconds (default 0.5)")
    parser.add_argument(
        "--max-requests", type=int, default=100_000, help="cap on requests per case"
    )
    parser.add_argument(
        "--quick", action="store_true", help="a very short smoke run; writes no files"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="run the server under cProfile (slows it) and add its top functions to the results",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help=f"results directory (default {RESULTS_DIR}; --quick writes only when given)",
    )
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--profile-to", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.duration = min(args.duration, 0.5)
        args.concurrency = args.concurrency[:1]
        args.sdk_threads = args.sdk_threads[:1]
        args.sdk_duration = args.sdk_duration or 0.5
        args.warmup = 0.1 if args.warmup is None else args.warmup
    args.sdk_duration = 3.0 if args.sdk_duration is None else args.sdk_duration
    args.warmup = 0.5 if args.warmup is None else args.warmup
    for name in ("duration", "sdk_duration", "warmup"):
        if not 0 <= getattr(args, name) <= 600:
            parser.error(f"--{name.replace('_', '-')} must be within 0..600 seconds")
    if args.max_requests < 1:
        parser.error("--max-requests must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve:
        serve(args.profile_to)
        return 0

    def on_sigterm(*_: Any) -> None:
        raise SystemExit(143)  # unwind, so the emulator subprocess is stopped

    signal.signal(signal.SIGTERM, on_sigterm)
    info = machine()
    print("Stripe emulator throughput (bench/emulator.py)")
    print(
        f"machine: {info['cpu_model']}; {info['cpu_count']} cores ({info['usable_cpus']} usable); "
        f"{info['memory_gib']} GiB; {info['python']}; {info['os']}; "
        f"load average {info['load_average_at_start']}"
    )
    print(
        f"cases: clients {','.join(args.clients)}; httpx/raw concurrency {args.concurrency} x "
        f"{args.duration} s; SDK threads {args.sdk_threads} x {args.sdk_duration} s; warm-up "
        f"{args.warmup} s; at most {args.max_requests} requests per case",
        flush=True,
    )
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-emulator-") as scratch:
        profile_path = Path(scratch, "server.prof") if args.profile else None
        with emulator_process(profile_path) as (url, pid):
            print(f"emulator: {url} (pid {pid}, its own process)", flush=True)
            results = run_cases(args, url, pid)
        profile = (
            profile_summary(profile_path, 25)
            if profile_path is not None and profile_path.exists()
            else None
        )
    outcome = verdict(results)
    report: dict[str, Any] = {
        "benchmark": "emulator",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join(
            ["python", "bench/emulator.py", *(sys.argv[1:] if argv is None else argv)]
        ),
        "machine": info,
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "versions": versions(),
        "parameters": {
            "duration_s": args.duration,
            "concurrency": args.concurrency,
            "clients": args.clients,
            "httpx_pool": args.httpx_pool,
            "sdk_threads": args.sdk_threads,
            "sdk_duration_s": args.sdk_duration,
            "warmup_s": args.warmup,
            "max_requests": args.max_requests,
            "quick": args.quick,
            "profiled": args.profile,
            "emulator": {"latency_ms": 0, "faults": [], "rate_limit": None},
            "requests": {
                "retrieve": "GET /v1/customers/{id}",
                "create": "POST /v1/customers name=... (form)",
                "authorization": "Bearer sk_test_bench",
            },
        },
        "cases": [asdict(r) for r in results],
        "verdict": outcome,
        "wall_seconds": round(time.monotonic() - started, 1),
    }
    if profile is not None:
        report["profile"] = profile
        print("\nserver profile, top functions by own time:")
        print(profile["top"])
        print("server profile, top functions by cumulative time:")
        print(profile["top_cumulative"])
    print(verdict_line(outcome))
    note = httpx_note(outcome)
    if note:
        print(f"note: {note}")
    if args.profile:
        print("note: the server ran under cProfile, so these figures understate its throughput")
    if not args.quick or args.output is not None:
        # A profiled run has its own files: its figures are not the emulator's throughput.
        stem = "emulator-profile" if args.profile else "emulator"
        for path in write_results(report, args.output or RESULTS_DIR, stem):
            print(f"wrote {path}")
    return 0 if outcome["result"] == "PASS" else 1


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    sys.exit(130)
