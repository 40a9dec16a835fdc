"""
Client dialects: the formats sensors already speak (InfluxDB line protocol,
airrohr, The Things Stack and ChirpStack webhooks), parsed into tables for
the one ingest service.  The parsers here are pure: bytes in, values out.
"""
