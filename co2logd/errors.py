"""The one error type every transport turns into its own reply."""

from typing import Optional


class IngestError(Exception):
    """
    An upload that was refused; nothing of it was stored.

    ``status`` is the HTTP status that describes it (400, 403, 413, 415, 503),
    ``reason`` a short token for counters and logs (``"parse"``,
    ``"auth-missing"``, ``"auth-invalid"``, ``"too-large"``,
    ``"content-type"``, ``"bad-column"``, ``"too-many-rows"``,
    ``"too-many-new-columns"``, ``"too-many-columns"``, ``"busy"``), and
    ``message`` one sentence for the sender.
    """

    #: seconds a 503's sender should wait (HTTP Retry-After), when known
    retry_after: Optional[float] = None
    #: the upload's sequence number (SEQUENCE_FIELD), when it had one
    seq: Optional[int] = None

    def __init__(self, status: int, reason: str, message: str):
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message

    def __repr__(self) -> str:
        return "IngestError({!r}, {!r}, {!r})".format(self.status, self.reason, self.message)


def bad_request(message: str, reason: str = "parse") -> IngestError:
    """A 400: the payload cannot be understood or has bad names."""
    return IngestError(400, reason, message)
