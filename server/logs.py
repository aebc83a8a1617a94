"""Logging for the server: one format, and no secret in any line.

User ids let anyone who knows one watch (and feed) that user's session, and viewer tokens let anyone
watch it; neither is written to the log, whoever writes the line (this code, uvicorn's access log,
a traceback). Every line is redacted as it is formatted: a user id, in every spelling the server
accepts (`sessions.canonical_user_id`: dashes anywhere or none, braces, `urn:uuid:`, any case),
shows the first 8 hex digits of its canonical spelling; every path segment after /api/ws/,
/api/stream/, /api/viewer-token/, /api/view/, /api/webrtc/, /api/whip/ and /api/whep/ shows its first 8
characters. Percent-encodings are
decoded first (the server decodes them before it reads an id, so any character of an id may come
encoded in a path or a query string).
"""

from __future__ import annotations

import logging
import re
from urllib.parse import unquote

SHOWN = 8  # characters of an id or token a log line keeps: enough to tell sessions apart

# 32 hex digits with dashes anywhere between them, and no hex digit right before or after: every
# spelling of a UUID the server accepts.
_UUID = re.compile(r"(?i)(?<![0-9a-f])((?:[0-9a-f]-*){31}[0-9a-f])(?![0-9a-f])")
_SECRET_PATH = re.compile(r"(/api/(?:ws|stream|viewer-token|view|webrtc|whip|whep)/)([^/\s\"'?#]{1,%d})[^/\s\"'?#]*" % SHOWN)


def _shown(match: re.Match[str]) -> str:
    return match.group(1).replace("-", "")[:SHOWN].lower() + "…"


def redact(text: str) -> str:
    if "%" in text:
        text = unquote(text)
    text = _SECRET_PATH.sub(r"\1\2…", text)
    return _UUID.sub(_shown, text)


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
