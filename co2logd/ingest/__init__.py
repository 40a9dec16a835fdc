"""
Every upload rule, whatever the transport: an :class:`Upload` goes in,
a :class:`Receipt` (or an :class:`~co2logd.errors.IngestError`) comes out.

- :mod:`~co2logd.ingest.service`: :class:`IngestService` and its values;
- :mod:`~co2logd.ingest.sequence`: per-node duplicate suppression;
- :mod:`~co2logd.ingest.auth`: salted checksums, signed downloads;
- :mod:`~co2logd.ingest.freshness`: replay claims and idempotency keys.
"""

from co2logd.ingest.service import MISSING_CONTENT_TYPE, IngestService, PreparedUpload, Receipt, Upload

__all__ = ["IngestService", "MISSING_CONTENT_TYPE", "PreparedUpload", "Receipt", "Upload"]
