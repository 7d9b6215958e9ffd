"""Usage: events in, meter values per event, aggregates per customer and window, and the ledger
of what was pushed to each target's meters."""
