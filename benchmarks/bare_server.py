"""
The HTTP ceiling: a bare twisted.web resource that reads the POST body and
answers co2logd's receipt, nothing else.  ``python benchmarks/bare_server.py [PORT]``
"""

import sys

from twisted.internet import reactor
from twisted.web.resource import Resource
from twisted.web.server import Site


class Bare(Resource):
    """Reads the body, answers ``{"saved-in-db": 1}``."""

    isLeaf = True

    def render_POST(self, request):
        request.content.read()
        request.setHeader(b"content-type", b"application/json")
        return b'{"saved-in-db": 1}'


if __name__ == "__main__":
    # a port of its own (or the one given), said the way co2logd says it, for run.py to read back
    port = reactor.listenTCP(int(sys.argv[1]) if len(sys.argv) > 1 else 0, Site(Bare()), interface="127.0.0.1")
    print("Listening for HTTP on 127.0.0.1:{}".format(port.getHost().port), flush=True)
    reactor.run()
