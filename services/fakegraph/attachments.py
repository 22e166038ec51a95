"""Attachments at the fake: the Attachment Upload API, sends that carry media, the media limit.

- ``POST /{version}/me/message_attachments`` (Attachment Upload API,
  https://developers.facebook.com/docs/messenger-platform/reference/attachment-upload-api):
  body ``{"message":{"attachment":{"type":"image|video|audio|file","payload":{"url":...,
  "is_reusable":true}}}}``, answer ``{"attachment_id":"<digits>"}``. Every upload is counted;
  ``upload_fail`` makes them fail as Meta does when it cannot fetch the URL (HTTP 400,
  ``100/2018008`` "(#100) Failed to fetch the file from the url", as Graph answered in
  microsoft/botframework-sdk#2542) or transiently (HTTP 500, code 2).
- A send whose attachment has ``payload.url`` counts one URL fetch: without an upload Meta
  fetches the file for every message (Saving assets,
  https://developers.facebook.com/documentation/business-messaging/messenger-platform/send-messages/saving-assets).
- A send with ``payload.attachment_id`` is accepted only when that id was uploaded, reusable,
  for the same page; otherwise code 100 (Meta's exact text for an unknown id is not
  documented; the fake says what is wrong).
- Audio and video: Meta allows 10 calls/s per page (Rate limiting,
  https://developers.facebook.com/documentation/business-messaging/messenger-platform/overview/rate-limiting).
  Beyond ``media_rate_limit`` in one wall-clock second the fake answers 613, as for its other
  send limit: the page names no code for this limit, and 613 is the Send API's rate-limit code.
  The arrival time of every audio/video send is kept (``GET /_fake/attachments``) so a test
  can count sends in any one-second window.
"""

from __future__ import annotations

import msgspec

from services.fakegraph import responses as r
from services.fakegraph.config import FakeGraphConfig

MEDIA_TYPES = frozenset({"audio", "video"})
UPLOAD_TYPES = frozenset({"image", "video", "audio", "file"})
MAX_MEDIA_TIMES = 100_000

FETCH_FAILED = r.GraphError(
    400, 100, "(#100) Failed to fetch the file from the url", subcode=2018008
)
NO_UPLOAD_ATTACHMENT = r.GraphError(
    400, 100, "(#100) message.attachment with a type and a payload.url is required"
)
UNKNOWN_ATTACHMENT_ID = r.GraphError(
    400, 100, "(#100) payload.attachment_id is not a reusable attachment of this page"
)


class Payload(msgspec.Struct):
    url: str | None = None
    attachment_id: str | int | None = None
    is_reusable: bool | None = None


class Attachment(msgspec.Struct):
    type: str | None = None
    payload: Payload | None = None


class _UploadMessage(msgspec.Struct):
    attachment: Attachment | None = None


class _UploadRequest(msgspec.Struct):
    message: _UploadMessage | None = None
    access_token: str | None = None


_decode_upload = msgspec.json.Decoder(_UploadRequest).decode
_decode_attachment = msgspec.json.Decoder(Attachment).decode


def upload_token_of_body(body: bytes) -> str | None:
    """The body's ``access_token`` (Graph also takes the token there)."""
    try:
        return _decode_upload(body).access_token
    except msgspec.MsgspecError:
        return None


class Attachments:
    """Uploaded ids, and what sends carried: counters since the start or the last reset."""

    def __init__(self) -> None:
        self.uploads = 0
        self.upload_failures = 0
        self.ids: dict[str, str] = {}  # attachment id -> the page it was uploaded for
        self.url_fetches = 0
        self.sends_by_id: dict[str, int] = {}
        self.media_per_second: dict[str, tuple[int, int]] = {}  # page -> (second, count)
        self.media_times: dict[str, list[float]] = {}  # page -> arrival times (Unix s)
        self._next_id = 1_000_000_000_000_000

    def upload(
        self, page: str, body: bytes, config: FakeGraphConfig
    ) -> tuple[int, bytes] | r.GraphError:
        """Answer one upload: the ``attachment_id``, or the error to give."""
        try:
            request = _decode_upload(body)
        except msgspec.MsgspecError:
            return r.INVALID_PARAMETER
        attachment = request.message.attachment if request.message else None
        payload = attachment.payload if attachment else None
        if (
            attachment is None
            or attachment.type not in UPLOAD_TYPES
            or not payload
            or not payload.url
        ):
            return NO_UPLOAD_ATTACHMENT
        self.uploads += 1
        if config.upload_fail and (
            config.upload_fail_times == 0 or self.upload_failures < config.upload_fail_times
        ):
            self.upload_failures += 1
            return FETCH_FAILED if config.upload_fail == "fetch" else r.TRANSIENT
        self._next_id += 1
        attachment_id = str(self._next_id)
        if payload.is_reusable:
            self.ids[attachment_id] = page
        return 200, r.json_body({"attachment_id": attachment_id})

    def check_send(
        self, page: str, raw: msgspec.Raw, now: float, config: FakeGraphConfig
    ) -> r.GraphError | None:
        """Count what a send's attachment carries; the error to answer, or None."""
        if len(raw) == 0 or bytes(raw) == b"null":
            return None
        try:
            attachment = _decode_attachment(raw)
        except msgspec.MsgspecError:
            return r.INVALID_PARAMETER
        if attachment.type in MEDIA_TYPES and self._over_media_limit(page, now, config):
            return r.RATE_LIMITED
        payload = attachment.payload
        if payload is None or attachment.type not in UPLOAD_TYPES:
            return None  # a template: its media, if any, are Facebook URLs or ids
        if payload.attachment_id is not None:
            attachment_id = str(payload.attachment_id)
            if self.ids.get(attachment_id) != page:
                return UNKNOWN_ATTACHMENT_ID
            self.sends_by_id[attachment_id] = self.sends_by_id.get(attachment_id, 0) + 1
        elif payload.url:
            self.url_fetches += 1
        return None

    def _over_media_limit(self, page: str, now: float, config: FakeGraphConfig) -> bool:
        times = self.media_times.setdefault(page, [])
        if len(times) < MAX_MEDIA_TIMES:
            times.append(now)
        second = int(now)
        last_second, count = self.media_per_second.get(page, (second, 0))
        count = count + 1 if last_second == second else 1
        self.media_per_second[page] = (second, count)
        return bool(config.media_rate_limit) and count > config.media_rate_limit

    def snapshot(self) -> dict[str, object]:
        """The ``GET /_fake/attachments`` answer."""
        return {
            "uploads": self.uploads,
            "upload_failures": self.upload_failures,
            "uploaded_ids": dict(self.ids),
            "url_fetches": self.url_fetches,
            "sends_by_attachment_id": dict(self.sends_by_id),
            "media_times": {page: list(times) for page, times in self.media_times.items()},
        }
