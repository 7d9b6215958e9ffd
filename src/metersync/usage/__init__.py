"""Usage: events in, meter values per event, aggregates per customer and window, and the ledger
of what was pushed to each target's meters.

The engine owns its ports (usage.ports: MeterEvent, Delivery, MeterEventSink, MeterFigures,
UsageAggregates); the meter systems and sources implement them, and nothing here imports one.

Database work from async code: async code never calls the store on the event loop. A coroutine
hands each stretch of blocking database work (a session, a Catalog, Journal or repository call)
to a worker thread with `asyncio.to_thread`, one stretch at a time, so that the target and
source calls in flight keep moving; the calls to targets and sources stay on the loop. Each
stretch is a plain function (`_plan` and `_record_outcomes` in usage.push, `_local_and_ledger` in
usage.verify), which also keeps the order of reads and writes easy to see.
"""
