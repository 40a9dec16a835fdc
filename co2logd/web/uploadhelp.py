"""``GET /uploadhelp``: a ready-to-paste upload example (the dashboard is in dashboard.py)."""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import shlex
from typing import Optional, Tuple

from twisted.logger import Logger
from twisted.web.resource import Resource

from co2logd.settings import Settings
from co2logd.web.html import escape, page


log = Logger()

PREFERRED = ("md5", "sha1", "sha256", "sha512")

# shown instead of a salt: obviously not one, and refused if pasted unchanged
SALT_PLACEHOLDER = "YOUR-SALT-HERE"


def needed_algorithms(checker) -> Optional[Tuple[str, ...]]:
    """
    The smallest set of algorithms ``AUTH_CHECKER`` accepts when all match,
    preferring md5/sha1/sha256/sha512 (what co2logserver's help shows).
    """
    algorithms = sorted(
        (a for a in hashlib.algorithms_guaranteed if not a.startswith("shake_")),
        key=lambda a: (a not in PREFERRED, a),
    )
    for size in range(1, len(algorithms) + 1):
        for combination in itertools.combinations(algorithms, size):
            try:
                if checker({a: "salt" for a in combination}):
                    return combination
            except Exception:
                log.failure("AUTH_CHECKER raised while building the upload help")
                return None
    return None


class UploadHelpResource(Resource):
    """A ready-to-paste shell example; with auth, the salted checksum lines too."""

    isLeaf = True

    def __init__(self, settings: Settings, rng=None):
        super().__init__()
        self.settings = settings
        self.rng = rng or random.Random()

    def render_GET(self, request):
        settings = self.settings
        if not settings.UPLOAD_HELP:
            request.setResponseCode(404)
            return page("Not Found", "<h1>Not Found</h1><p>Upload help is switched off.</p>")
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        host = (request.getHeader(b"host") or b"localhost:8080").decode("latin-1")
        payload = json.dumps(
            {
                "sensor_temperature_c": [round(20 * self.rng.random(), 1) for _ in range(5)],
                "sensor_humidity_percent": [round(100 * self.rng.random(), 1) for _ in range(5)],
            }
        )
        lines = [
            "# the server address and port",
            "SERVER={}".format(shlex.quote("http://" + host)),
            "",
            "# example payload (random test data): put your measurements here",
            "PAYLOAD={}".format(shlex.quote(payload)),
        ]
        if settings.UPLOAD_REQUIRES_AUTH:
            algorithms = needed_algorithms(settings.AUTH_CHECKER)
            if not algorithms or not settings.CHECKSUM_SALTS:
                body = "<h1>Data Upload</h1><p><strong>The server's upload authentication " \
                       "configuration is wrong. Upload is impossible.</strong></p>"
                return page(settings.NAME + " - Data Upload", body)
            # the salts are secret: the page never shows them, so the script carries a placeholder
            lines += [
                "",
                "# PLACEHOLDER: replace {} with one of the salts in the server's".format(SALT_PLACEHOLDER),
                "# CO2LOGSERVER_CHECKSUM_SALTS (this page never shows them)",
                "SALT={}".format(shlex.quote(SALT_PLACEHOLDER)),
            ]
            for alg in algorithms:
                lines += [
                    "",
                    "# the salted {} checksum of the payload".format(alg),
                    "SALTED_{0}_CHECKSUM=$(printf '%s' \"$PAYLOAD$SALT\" | {0}sum | cut -d' ' -f1)".format(alg),
                ]
            headers = "".join(
                "  -H \"Content-{0}-Salted: $SALTED_{0}_CHECKSUM\" \\\n".format(alg) for alg in algorithms
            )
        else:
            headers = ""
        lines += [
            "",
            "# upload the data",
            "curl -H 'Content-Type: application/json' \\\n{}  -d \"$PAYLOAD\" \"$SERVER/upload\"".format(headers),
        ]
        body = (
            "<h1>Data Upload</h1><p><a href=\"/\">Home Page</a></p><h2>JSON</h2>"
            "<p>To upload JSON data to this server from a shell, run:</p><pre id=\"script\">{}</pre>"
            "{}"
            "<p>CSV (<code>text/csv</code>), form data (<code>application/x-www-form-urlencoded</code>) "
            "and msgpack (<code>application/msgpack</code>) work the same way.</p>"
        ).format(
            escape("\n".join(lines)),
            "<p>Replace the line marked <strong>PLACEHOLDER</strong> before running it: "
            "the script as shown is refused (403).</p>" if settings.UPLOAD_REQUIRES_AUTH else "",
        )
        return page(settings.NAME + " - Data Upload", body)
