"""Event ingest: CloudEvents in, one `usage_event` row per (source, id) and one `usage_value` row
per event and matching meter out.

`ingest_events` takes events already decoded, `ingest_json` the bytes or text of a file; both
return an `IngestReport`. The rules they apply are in `_api`'s docstring.
"""

from metersync.usage.ingest._api import ingest_events, ingest_file, ingest_json, ingest_ndjson
from metersync.usage.ingest._batches import DEFAULT_BATCH_SIZE
from metersync.usage.ingest._cloudevent import SPECVERSION
from metersync.usage.ingest._report import IngestReport, Rejection

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "SPECVERSION",
    "IngestReport",
    "Rejection",
    "ingest_events",
    "ingest_file",
    "ingest_json",
    "ingest_ndjson",
]
