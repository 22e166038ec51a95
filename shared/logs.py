"""Structured JSON log lines, one per event, with secrets scrubbed on the way out."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Iterable

_TOKEN_SHAPES = [
    re.compile(r"EAA[A-Za-z0-9]{10,}"),  # the shape of Meta's page tokens
    re.compile(r"(access_token=)[^&\s\"']+"),
    re.compile(r"(?i)(authorization:?\s*(?:bearer|oauth)\s+)[^\s\"',]+"),
]
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message"}


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.service = service
        self.secrets = [s for s in secrets if s]

    def scrub(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "[redacted]")
        for shape in _TOKEN_SHAPES:
            text = shape.sub(lambda m: (m.group(1) if m.groups() else "") + "[redacted]", text)
        return text

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return self.scrub(json.dumps(entry, default=str))


def setup(service: str, level: str, secrets: Iterable[str] = ()) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service, secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # httpx logs full request URLs at INFO; keep third-party chatter at WARNING.
    for name in ("httpx", "httpcore", "aiohttp.access", "uvicorn.access"):
        logging.getLogger(name).setLevel(logging.WARNING)
