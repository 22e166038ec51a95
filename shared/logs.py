"""Structured JSON log lines, one per event, with secrets scrubbed and terminal colour codes
stripped on the way out; and the start-up line that shows a service's effective settings."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Iterable

import msgspec

from shared.settings import Secret

_TOKEN_SHAPES = [
    re.compile(r"EAA[A-Za-z0-9]{10,}"),  # the shape of Meta's page tokens
    re.compile(r"(access_token=)[^&\s\"']+"),
    re.compile(r"(?i)(authorization:?\s*(?:bearer|oauth)\s+)[^\s\"',]+"),
]
# uvicorn adds `color_message`, a copy of the message with ANSI colours: never a field here.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "color_message",
}
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_URL_PASSWORD = re.compile(r"(://[^/@:\s]*:)[^@/\s]+@")


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
        # Colour codes (a library's own) would reach the JSON as \u001b escapes: strip them
        # from every text field first.
        for key, value in entry.items():
            if isinstance(value, str) and "\x1b" in value:
                entry[key] = _ANSI.sub("", value)
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


def _masked(value: object) -> object:
    if isinstance(value, Secret):
        return "***"
    if isinstance(value, dict):
        return {str(k): _masked(v) for k, v in value.items()}
    if isinstance(value, frozenset | set):
        return sorted(str(_masked(v)) for v in value)
    if isinstance(value, tuple | list):
        return [_masked(v) for v in value]
    if isinstance(value, str):
        return _URL_PASSWORD.sub(r"\1***@", value)  # redis://:password@host
    return value


def effective_settings(settings: msgspec.Struct) -> dict[str, object]:
    """A service's settings as its start-up line shows them: every field, secrets as ``***``
    (tokens, HMAC keys, a password inside a URL)."""
    return {name: _masked(getattr(settings, name)) for name in settings.__struct_fields__}


def started(service: str, settings: msgspec.Struct) -> None:
    logging.getLogger(f"fanout.{service}").info(
        "starting", extra={"settings": effective_settings(settings)}
    )
