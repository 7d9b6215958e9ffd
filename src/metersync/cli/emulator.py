"""`metersync emulator`: the bundled Stripe emulator, standalone."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:  # imported when the command runs: see the start-up note in metersync.cli
    from metersync.testing import StripeEmulator


def emulator_command(
    port: int = typer.Option(12111, "--port", min=0, max=65535, help="0 picks a free port."),
    host: str = typer.Option(
        "127.0.0.1", "--host", help="Address to bind; loopback unless you mean otherwise."
    ),
    latency_ms: float = typer.Option(0.0, "--latency-ms", min=0, help="Added to every call."),
    jitter_ms: float = typer.Option(0.0, "--jitter-ms", min=0, help="± random on the latency."),
    rate_limit: float | None = typer.Option(
        None, "--rate-limit", min=0.1, help="Requests/s before 429s (Stripe test mode: 25)."
    ),
    search_delay_s: float = typer.Option(
        0.0, "--search-delay", min=0, help="Seconds before a write shows in customer search."
    ),
) -> None:
    """Run the Stripe emulator in the foreground (Ctrl-C to stop).

    Point stripe-python (or metersync, with METERSYNC_STRIPE_API_BASE) at the printed URL with
    any sk_test_ key. Faults and every other knob: POST JSON to /_emulator/config.
    """
    from metersync.testing import DEFAULT_TEST_KEY, StripeEmulator

    emulator = StripeEmulator(
        host=host,
        port=port,
        latency_ms=latency_ms,
        jitter_ms=jitter_ms,
        rate_limit=rate_limit,
        search_delay_s=search_delay_s,
    )

    def announce(running: StripeEmulator) -> None:
        typer.echo(f"Stripe emulator listening on {running.url}", err=False)
        typer.echo(
            f"  try: STRIPE_API_KEY={DEFAULT_TEST_KEY} METERSYNC_STRIPE_API_BASE={running.url}"
        )
        typer.echo(f"  knobs: {running.url}/_emulator/config  stats: {running.url}/_emulator/stats")

    try:
        emulator.serve_forever(on_ready=announce)
    except OSError as exc:
        raise typer.BadParameter(
            f"cannot listen on {host}:{port}: {exc.strerror}", param_hint="--port"
        ) from None
