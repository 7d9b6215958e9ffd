"""The sync engine: plan (pure) and apply (journaled), for any target.

The engine owns its ports (sync.ports: the Target protocol, the render context); targets
implement them, and nothing here imports a target.

Database work from async code: async code never calls the store on the event loop. A coroutine
hands each stretch of blocking database work (a session, a Catalog, Journal or repository call)
to a worker thread with `asyncio.to_thread`, one stretch at a time, so that the target and
source calls in flight keep moving; the calls to targets and sources stay on the loop. Each
stretch is a plain function (`_plan_run` and `_record_run` here, `_plan` and `_record_outcomes`
in usage.push), which also keeps the order of reads and writes easy to see.
"""
