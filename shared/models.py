"""msgspec Structs at every boundary: the API bodies, the stream payload, the provider's answers.

Encoders and decoders are built once here. API bodies forbid unknown fields; the stream payload
is versioned and new fields always get defaults, because old and new pods share a stream during
a rolling deploy.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

# Meta's message object and the lane rules live in shared.messages; re-exported for callers.
from shared.messages import MAX_TEXT, Message, MessageTag, MessagingType

# After shared.messages: shared.providers (imported here first) takes Message from this module.
from shared.providers.whatsapp_message import WhatsAppMessage

__all__ = ["MAX_TEXT", "Message", "MessageTag", "MessagingType", "WhatsAppMessage"]

Psid = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[0-9]+$")]
PageId = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[0-9]+$")]
PhoneNumberId = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[0-9]+$")]
# E.164 with or without its "+", checked by the producer so the error names the row
# (services/producer/whatsapp.py); stored and sent as digits only.
PhoneNumber = Annotated[str, Meta(min_length=1, max_length=64)]
Channel = Literal["messenger", "whatsapp"]
JobStatusName = Literal[
    "scheduled", "pending", "running", "paused", "completed", "failed", "cancelled"
]


class UploadSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A job without its recipients: the ``spec`` part of a multipart upload."""

    page_id: PageId
    # A WhatsApp job is a WhatsAppUploadSpec (services/producer/whatsapp.py routes by channel).
    channel: Literal["messenger"] = "messenger"
    message: Message
    messaging_type: MessagingType
    tag: MessageTag | None = None
    metadata: dict[str, Any] | None = None
    send_at: Annotated[str, Meta(max_length=64)] | None = None  # ISO 8601 with a time zone
    callback_url: Annotated[str, Meta(min_length=1, max_length=2048)] | None = None
    # The 24-hour window: "require" skips people outside it (code window_closed), "ignore"
    # sends regardless; unset, RESPONSE/UPDATE jobs require it on a page whose webhooks have
    # flowed for 24 hours. A fallback (a UTILITY template) goes to people outside it instead.
    window: Literal["require", "ignore"] | None = None
    fallback: Message | None = None
    # False sends to the page's suppressed people too (e.g. after fixing a wrong suppression
    # in bulk, or a mandatory notice): see the README.
    suppress: bool = True
    # Auto-pause: the job pauses when more than this share of the last 500 recipients settled
    # failed for a reason about the person or the message (not transient answers or throttles,
    # which the page's circuit breaker handles); 1 never pauses.
    max_failure_rate: Annotated[float, Meta(gt=0, le=1)] = 0.2


class JobRequest(UploadSpec, forbid_unknown_fields=True, kw_only=True):
    recipients: Annotated[list[Psid], Meta(min_length=1)]


class WhatsAppUploadSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A WhatsApp job without its recipients. No messaging_type, tag, window or fallback:
    WhatsApp has no lanes; a template reaches people outside the 24-hour window, a text does
    not (Meta answers 131047, recorded as the recipient's failure)."""

    channel: Literal["whatsapp"]
    phone_number_id: PhoneNumberId  # the sender, in place of page_id
    message: WhatsAppMessage
    metadata: dict[str, Any] | None = None
    send_at: Annotated[str, Meta(max_length=64)] | None = None  # ISO 8601 with a time zone
    callback_url: Annotated[str, Meta(min_length=1, max_length=2048)] | None = None
    suppress: bool = True
    max_failure_rate: Annotated[float, Meta(gt=0, le=1)] = 0.2
    # The portfolio's messaging tier (unique people reached outside a service window per
    # moving 24 h): "refuse" answers 422 when the job's template would reach more people than
    # are left; "spread" accepts it, and dispatch sends as room returns.
    tier: Literal["refuse", "spread"] = "refuse"


class WhatsAppJobRequest(WhatsAppUploadSpec, forbid_unknown_fields=True, kw_only=True):
    recipients: Annotated[list[PhoneNumber], Meta(min_length=1)]


MAX_TEST_RECIPIENTS = 10


class SendTestRequest(UploadSpec, forbid_unknown_fields=True, kw_only=True):
    """``POST /v1/jobs`` with ``test_recipients`` instead of ``recipients`` or a CSV: the
    message sent to these people only, at once, answered synchronously; no job is made.
    ``test_variables`` fill the placeholders (e.g. the first row of the CSV about to be sent);
    without them each placeholder takes its default."""

    test_recipients: Annotated[list[Psid], Meta(min_length=1, max_length=MAX_TEST_RECIPIENTS)]
    test_variables: dict[str, Annotated[str, Meta(max_length=2000)]] | None = None


class SendTestResult(msgspec.Struct, kw_only=True):
    recipient: str
    outcome: Literal["sent", "failed"]
    code: str | None  # Meta's error code (or ours, e.g. timeout), None when sent
    subcode: str | None
    message: str | None  # Meta's message_id when sent, its error message when failed


class SendTestAnswer(msgspec.Struct, kw_only=True):
    test: bool
    results: list[SendTestResult]


MAX_CHECKED = 10_000


class CheckRequest(UploadSpec, forbid_unknown_fields=True, kw_only=True):
    """``POST /v1/checks``: a job as it would be submitted (recipients: up to 10,000, e.g. the
    first rows of a CSV), checked without sending or writing anything."""

    recipients: Annotated[list[Psid], Meta(min_length=1, max_length=MAX_CHECKED)]


class WhatsAppCheckRequest(WhatsAppUploadSpec, forbid_unknown_fields=True, kw_only=True):
    """``POST /v1/checks`` for a WhatsApp job."""

    recipients: Annotated[list[PhoneNumber], Meta(min_length=1, max_length=MAX_CHECKED)]


class CheckAnswer(msgspec.Struct, kw_only=True):
    """What a job would meet at dispatch: the window rule it would get and how many of the
    recipients checked are outside the window, suppressed, and would be skipped."""

    checked: int  # distinct recipients looked up
    window_rule: Literal["require", "ignore"]
    window_default: bool  # the rule was chosen for the job (it did not ask)
    outside_window: int  # no interaction with the page in the last 24 hours
    suppressed: int  # on the page's suppression list
    would_skip: int  # skipped at dispatch (or sent the fallback, if the job has one)
    notes: list[str]
    # WhatsApp only (absent for Messenger): the portfolio's messaging tier (null: unlimited),
    # how much of it is left now, and how many of the recipients checked would count against
    # it (a template to someone outside the service window not reached in the last 24 h).
    channel: Channel | msgspec.UnsetType = msgspec.UNSET
    tier: int | None | msgspec.UnsetType = msgspec.UNSET
    tier_left: int | None | msgspec.UnsetType = msgspec.UNSET
    would_count: int | msgspec.UnsetType = msgspec.UNSET


class JobAccepted(msgspec.Struct, kw_only=True):
    job_id: str
    status: JobStatusName
    total: int
    duplicates_removed: int
    status_url: str


class JobView(msgspec.Struct, kw_only=True):
    job_id: str
    status: JobStatusName
    page_id: str  # the sender: a page, or a WhatsApp job's phone_number_id
    total: int
    sent: int
    failed: int
    skipped: int
    indoubt: int
    progress: float  # (sent + failed + skipped) / total
    rate_per_s: float | None  # recipients finished per second since the job started
    eta_s: float | None  # seconds to go at that rate
    created_at: str | None
    started_at: str | None
    finished_at: str | None
    send_at: str | None
    messaging_type: str
    tag: str | None
    metadata: dict[str, Any] | None
    error_codes: dict[str, int]
    reason: str | None  # why a job ended failed or cancelled
    callback_url: str | None
    # The completion callback once settled: "delivered", or "failed" after its last attempt.
    callback_status: Literal["delivered", "failed"] | None = None
    # Why the page's sends are held right now, while the job has not ended: "provider_outage"
    # (the circuit breaker holds the page and probes it; it resumes by itself) or
    # "page_restricted" (Meta's 10/1893063; a user resumes a job of the page to lift it).
    page_hold: str | None = None
    # "tier_reached" (WhatsApp: the portfolio reached as many people outside a service window
    # in the moving 24 h as its messaging tier allows): the job's next people wait, unsent and
    # not skipped, until hold_until, when the oldest of them ages out and places return.
    hold_until: str | None = None
    # Recipients Meta's webhooks said received (delivered) and read the message: "at least"
    # counts, as receipts are best effort (a person may read with receipts off; a page not
    # wired to webhooks reports none). Read implies delivered.
    delivered: int = 0
    read: int = 0
    # WhatsApp: recipients whose send Meta accepted but then reported ``failed`` in a status
    # webhook, and no device reported delivered (in sent; the error is in the job's errors)
    undelivered: int = 0
    # WhatsApp: delivered messages Meta said are billable, by pricing category (per-message
    # pricing charges delivered messages)
    billable: dict[str, int] = {}
    # What the message is: text, image, video, audio, file, button_template, generic_template,
    # media_template, customer_feedback_template or utility_template.
    message_kind: str = "text"
    # The window rule that applied, and whether it was the default (the job did not say).
    window: Literal["require", "ignore"] = "ignore"
    window_default: bool = True
    suppress: bool = True
    fallback_sent: int = 0  # people outside the window sent the utility fallback (in `sent`)
    skipped_reasons: dict[str, int] = {}  # code -> count, e.g. {"window_closed": 1000}
    max_failure_rate: float = 0.2
    # Paused by its failure rate (the reason says the rate and top codes), until resumed.
    auto_paused: bool = False
    channel: Channel = "messenger"
    phone_number_id: str | None = None  # a WhatsApp job's number (also in page_id)
    tier: Literal["refuse", "spread"] | None = None  # a WhatsApp job's tier choice


class JobSeries(msgspec.Struct, kw_only=True):
    """Per second over the last hour, per minute over the job's life: each bucket [epoch
    second it starts, sent, failed, delivered, read], oldest first (delivered and read once
    the receipts are counted into the series: lib.lua series_add)."""

    seconds: list[tuple[int, int, int, int, int]]
    minutes: list[tuple[int, int, int, int, int]]


class JobList(msgspec.Struct, kw_only=True):
    items: list[JobView]
    next: str | None  # pass as ?after= for the next page; null at the end


class ErrorItem(msgspec.Struct, kw_only=True):
    recipient: str
    code: str
    subcode: str | None
    message: str
    attempts: int


class ErrorPage(msgspec.Struct, kw_only=True):
    items: list[ErrorItem]
    next: str | None  # pass as ?after= for the next page; null at the end


class SuppressRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    recipients: Annotated[list[Psid], Meta(min_length=1, max_length=10_000)]
    reason: Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:/-]+$")] = (
        "api"
    )


class SuppressionItem(msgspec.Struct, kw_only=True):
    psid: str
    code: str  # the provider's code/subcode (e.g. 551/1545041), or the reason given to the API
    suppressed_at: str


class SuppressionPage(msgspec.Struct, kw_only=True):
    items: list[SuppressionItem]
    next: str | None  # pass as ?after= for the next page; null at the end


class SuppressAdded(msgspec.Struct, kw_only=True):
    added: int  # newly suppressed (the others were already, their reason is updated)
    total: int


class PersonView(msgspec.Struct, kw_only=True):
    page_id: str
    psid: str
    last_interaction_at: str | None  # from the page's webhooks; forgotten after 8 days
    in_window: bool  # an interaction in the last 24 hours
    suppressed: SuppressionItem | None


class ErrorBody(msgspec.Struct):
    code: str
    message: str
    field: str | None = None


class ErrorResponse(msgspec.Struct):
    error: ErrorBody


class TierExceeded(msgspec.Struct, kw_only=True):
    """A WhatsApp template job refused for its portfolio's messaging tier (422, code
    ``tier_exceeded``, field ``recipients``): these sit beside code, message and field in the
    error, for a client to act on. Sending the job with ``"tier": "spread"`` accepts it."""

    can_send_now: int  # people the tier has left now
    tier: int  # the portfolio's tier: unique people outside a service window per moving 24 h
    portfolio: str  # FANOUT_WA_PORTFOLIOS' name, or the number's id when it is in none
    reached_24h: int  # people the portfolio reached outside a window in the last 24 h
    would_count: int | None  # the job's people who would count; None: more than the tier
    room_at: str | None  # when the whole job fits (ISO 8601); None: it is larger than the tier


class Chunk(msgspec.Struct, kw_only=True):
    """One work-stream entry: a run of consecutive recipients of one job."""

    v: int = 1
    job: str
    no: int
    start: int  # position of ids[0] in the job; ids[i] is recipient start + i
    ids: list[str]
    vars: list[dict[str, str]] | None = None  # per recipient, the columns the text uses


class OutboundMessage(msgspec.Struct, omit_defaults=True, kw_only=True):
    """The Send API body, exactly as Meta documents it."""

    recipient: dict[str, str]
    message: Message
    messaging_type: str
    tag: str | None = None


class GraphError(msgspec.Struct, kw_only=True):
    message: str = ""
    type: str = ""
    code: int = 0
    error_subcode: int | None = None
    is_transient: bool = False
    fbtrace_id: str | None = None
    # WhatsApp's answers say what went wrong in error_data.details (Meta: build on code and
    # details). Any JSON is taken, so an odd error_data never makes the answer unreadable.
    error_data: object = None


class GraphAnswer(msgspec.Struct, kw_only=True):
    recipient_id: str | None = None
    message_id: str | None = None
    attachment_id: str | None = None  # the Attachment Upload API's answer
    error: GraphError | None = None


class Failure(msgspec.Struct, array_like=True):
    """A recipient that ended failed, as the finish script records it."""

    pos: int
    recipient: str
    code: str
    subcode: str
    message: str
    attempts: int
    # About the person or the message (not a transient answer that ran out of retries, nor a
    # throttle): counted in the job's failure rate (auto-pause, record_answers.lua).
    counts: bool = False


class Outcome(msgspec.Struct, array_like=True):
    """What a delivered chunk reports to the finish script (msgpack, read by cmsgpack)."""

    sent: list[int]
    failed: list[Failure]
    # Positions resent after a timeout or reset: the provider may have taken the first try.
    doubtful: list[int]


json_encode = msgspec.json.Encoder().encode
msgpack_encode = msgspec.msgpack.Encoder().encode
job_request_decoder = msgspec.json.Decoder(JobRequest)
upload_spec_decoder = msgspec.json.Decoder(UploadSpec)
test_send_decoder = msgspec.json.Decoder(SendTestRequest)
check_decoder = msgspec.json.Decoder(CheckRequest)
wa_job_decoder = msgspec.json.Decoder(WhatsAppJobRequest)
wa_upload_spec_decoder = msgspec.json.Decoder(WhatsAppUploadSpec)
wa_check_decoder = msgspec.json.Decoder(WhatsAppCheckRequest)
chunk_decoder = msgspec.msgpack.Decoder(Chunk)
graph_answer_decoder = msgspec.json.Decoder(GraphAnswer)
