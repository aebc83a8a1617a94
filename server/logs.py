"""Logging for the server: one format, and no secret in any line.

User ids let anyone who knows one watch (and feed) that user's session, and viewer tokens let anyone
watch it; neither is written to the log, whoever writes the line (this code, uvicorn's access log,
a traceback). Every line is redacted as it is formatted: a UUID, in any spelling, shows its first 8
characters, and so does every path segment after /api/ws/, /api/stream/, /api/viewer-token/ and
/api/view/.
"""

from __future__ import annotations

import logging
import re

SHOWN = 8  # characters of an id or token a log line keeps: enough to tell sessions apart

_UUID = re.compile(
    r"(?i)(?:urn:uuid:)?\{?\b([0-9a-f]{8})-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}\b\}?"
)
_SECRET_PATH = re.compile(r"(/api/(?:ws|stream|viewer-token|view)/)([^/\s\"'?#]{1,%d})[^/\s\"'?#]*" % SHOWN)


def redact(text: str) -> str:
    text = _SECRET_PATH.sub(r"\1\2…", text)
    return _UUID.sub(r"\1…", text)


class RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", datefmt="%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("httpx", "httpcore", "urllib3", "PIL"):
        logging.getLogger(noisy).setLevel(max(logging.INFO, root.level))
