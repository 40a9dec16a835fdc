"""
Transports other than HTTP: UDP datagrams and serial lines.

They only frame bytes and call ``IngestService.ingest``; everything about
payloads, auth and storage stays in the ingest service.
"""
