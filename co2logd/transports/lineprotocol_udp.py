"""
InfluxDB line protocol over UDP (``--influx-udp PORT``): one datagram = one batch of points.

Datagrams are plain line protocol with no header block, as InfluxDB's UDP
service and Telegraf's ``socket_listener``/``influxdb`` UDP output send them;
timestamps are in nanoseconds.  Each datagram goes through the ingest
service as one atomic upload labelled ``udp:<sender>``; a bad one is
counted and logged (rate-limited) like every UDP refusal and never stops the
listener.  UDP carries no credentials: with ``UPLOAD_REQUIRES_AUTH`` every
datagram is refused.
"""

from __future__ import annotations

from co2logd.dialects import influx, lineprotocol
from co2logd.errors import IngestError
from co2logd.ingest import Upload
from co2logd.transports.udp import UDPIngestProtocol, UDPService, parse_udp_spec

LINE_PROTOCOL = "text/plain; format=line-protocol"


class LineProtocolUDPProtocol(UDPIngestProtocol):
    """A UDP listener whose datagrams are line protocol."""

    def frame(self, datagram: bytes, host: str) -> Upload:
        """The datagram's points as an Upload of rows; a 400 IngestError naming the bad line."""
        try:
            table, _ = influx.table_of_body(datagram, "ns", self.clock.seconds(), self.settings.MAX_ROWS_PER_UPLOAD)
        except lineprotocol.LineProtocolError as e:
            raise IngestError(400, "parse", str(e)) from None
        except lineprotocol.TooManyPoints as e:
            raise IngestError(400, "too-many-rows", "more than {} points in one datagram".format(e.limit)) from None
        return Upload(datagram, LINE_PROTOCOL, (), "udp:" + host, table=table)


def influx_udp_service(spec, ingest, reactor, settings) -> UDPService:
    """The service for one ``--influx-udp`` value (``PORT`` or ``udp:PORT[:interface=ADDR]``)."""
    port, interface = parse_udp_spec(spec) if isinstance(spec, str) else spec
    service = UDPService(port, interface, ingest, reactor, settings, protocol_class=LineProtocolUDPProtocol)
    service.setName("influx-udp {}{}".format(port, ":" + interface if interface else ""))
    return service
