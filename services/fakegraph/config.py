"""What the fake Graph API is told to do: latency, failures, blocks, limits, tokens.

`FakeGraphConfig` is a plain mutable msgspec Struct. The server reads it on every request,
so a test may change a field in place (`fake.config.fail_rate = 1.0`) or post a subset of
fields to `POST /_fake/config`; both take effect on the next request.
"""

from __future__ import annotations

from typing import Literal

import msgspec

# The codes `wa_errors` may give (whatsapp.py builds their answers).
WA_INJECTABLE = frozenset(
    {131026, 131050, 131047, 131049, 131048, 131056, 130429, 131000, 368, 80007, 4}
    | {132000, 132001, 132012, 132015, 132016}
    | {131005, 131016, 131031, 131042, 131045, 133010}
)


class FakeGraphConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Behaviour of the fake Send API; every field has a harmless default."""

    latency_ms: float = 0.0
    """Delay before answering (an event-loop timer, never blocking); 0 answers at once."""
    fail_rate: float = 0.0
    """Fraction of requests answered HTTP 500, code 2 (transient); not delivered."""
    blocked_rate: float = 0.0
    """Fraction of PSIDs (by crc32 of the PSID, so always the same ones) answered 551."""
    blocked: list[str] = []
    """PSIDs always answered 551 (HTTP 400, subcode 1545041); not delivered. To change it
    at runtime assign a new list (the server caches a set of it by identity and length)."""
    rate_limit: int = 0
    """> 0: requests per page per wall-clock second; those beyond answer 613 (HTTP 400)."""
    tokens: dict[str, str] = {}
    """token -> page_id. Empty: any non-empty token is accepted, the page is the URL's."""
    revoked: bool = False
    """Every request answers 190, subcode 463 (token invalidated), HTTP 400."""
    seed: int = 0
    """Seed of the random generator that draws `fail_rate` failures."""
    outage_until: float = 0.0
    """Unix time (s): until then every send is answered as Graph answers in an outage, HTTP
    503, code 2 "Service temporarily unavailable", `is_transient` (Graph API error handling,
    https://developers.facebook.com/docs/graph-api/guides/error-handling); not delivered.
    0 or a past time: no outage. Checked before anything else: nothing works in an outage."""
    restricted_pages: list[str] = []
    """Pages whose sends answer 10/1893063 "You are temporarily restricted from sending
    messages" (HTTP 400; Messenger error codes, updated Jun 25, 2026,
    https://developers.facebook.com/documentation/business-messaging/messenger-platform/error-codes);
    not delivered."""
    ambiguous: list[str] = []
    """PSIDs always answered HTTP 500, code 2, `is_transient` (as `fail_rate`): Meta says a
    person who blocked the business may also get code 2 ("might also receive this error if a
    customer has blocked your business",
    https://developers.facebook.com/documentation/business-messaging/messenger-platform/error-codes);
    not delivered, counted per recipient in `/_fake/refused` under "2"."""
    enforce_window: bool = False
    """Sends of `messaging_type` RESPONSE or UPDATE (or none) to a person whose last message
    (fed through `POST /_fake/window`) is over 24 h old, or unknown, answer 10/2018278
    "This message is sent outside of allowed window" (HTTP 400; same error-codes page; the
    24 h rule: https://developers.facebook.com/documentation/business-messaging/messenger-platform/send-messages).
    Tags (7 days) and UTILITY templates are not checked."""

    media_rate_limit: int = 10
    """Audio and video sends per page per wall-clock second; those beyond answer 613 (HTTP
    400). Meta's limit is 10/s (see attachments.py); 0 = no limit."""
    upload_fail: Literal["", "fetch", "transient"] = ""
    """Attachment uploads fail: "fetch" as Meta does when it cannot fetch the URL (HTTP 400,
    100/2018008, permanent), "transient" with HTTP 500, code 2; "" = they succeed."""
    upload_fail_times: int = 0
    """With `upload_fail`: only the first N uploads fail (0 = every one)."""

    # Answers gone bad after the provider delivered (each a fraction of delivered sends, drawn
    # with `seed`): what a proxy in front of a real provider, or a cut connection, can do. The
    # message counts as delivered; a client that resends makes a real duplicate.
    html_502_rate: float = 0.0
    """Answer HTTP 502 with an HTML page (a proxy's "Bad Gateway"), not Graph's JSON."""
    garbled_200_rate: float = 0.0
    """Answer HTTP 200 with a body that is not JSON."""
    cut_rate: float = 0.0
    """Send the head and half the body of the success answer, then close the connection."""
    hang_rate: float = 0.0
    """Never answer: the connection stays open, silent, until the client gives up."""

    # WhatsApp Cloud API (whatsapp.py): a send is WhatsApp's when its body names
    # messaging_product or its id is in `wa_numbers`.
    wa_numbers: list[str] = []
    """phone_number_ids always answered as WhatsApp numbers (a body without
    messaging_product then gets Meta's code 100)."""
    wa_throughput: int = 0
    """> 0: sends per number per wall-clock second; those beyond answer 130429 (Meta's
    default is 80/s, https://developers.facebook.com/documentation/business-messaging/whatsapp/throughput)."""
    wa_pair_interval_s: float = 6.0
    """A send to a person within this many seconds of the number's last accepted send to them
    answers 131056 and counts a pair violation (Meta: 1 message every 6 s to the same user);
    0 = no pair limit."""
    wa_tier: int = 0
    """> 0: unique people without an open service window a portfolio may reach per moving 24 h;
    beyond it sends are still accepted (Meta has no dedicated code) and counted in
    `tier_violations`."""
    wa_portfolios: dict[str, str] = {}
    """phone_number_id -> business portfolio: the numbers of a portfolio share its tier (Meta
    since 2025-10-07); a number in none is its own portfolio, named by its id."""
    wa_errors: dict[str, int] = {}
    """Recipient digits -> the error code every send to them answers: 131026 (undeliverable),
    131050 (stopped marketing), 131047 (re-engagement), 131049, 131048, 131056, 130429,
    131000, 368, 80007, 4, 132000, 132001, 132012, 132015, 132016, 131005, 131016, 131031,
    131042, 131045, 133010."""
    wa_spam_after: int = 0
    """> 0: after this many accepted sends from a number, every send answers 131048 (spam
    rate limit hit)."""
    wa_enforce_window: bool = False
    """A text (not a template) to a person whose last message (`POST /_fake/window`,
    `/_fake/inbound`) is over 24 h old or unknown answers 131047 (re-engagement)."""

    def __post_init__(self) -> None:
        # Runs on construction and on decode/convert, so `POST /_fake/config` is validated.
        if not 0.0 <= self.fail_rate <= 1.0:
            raise ValueError("fail_rate must be between 0 and 1")
        if not 0.0 <= self.blocked_rate <= 1.0:
            raise ValueError("blocked_rate must be between 0 and 1")
        if self.latency_ms < 0:
            raise ValueError("latency_ms must be >= 0")
        if self.rate_limit < 0:
            raise ValueError("rate_limit must be >= 0")
        if self.media_rate_limit < 0 or self.upload_fail_times < 0:
            raise ValueError("media_rate_limit and upload_fail_times must be >= 0")
        if self.outage_until < 0:
            raise ValueError("outage_until must be >= 0 (a Unix time in seconds)")
        bad = (self.html_502_rate, self.garbled_200_rate, self.cut_rate, self.hang_rate)
        if min(bad) < 0.0 or sum(bad) > 1.0:
            raise ValueError("the bad-answer rates must be >= 0 and add up to at most 1")
        self._check_whatsapp()

    def _check_whatsapp(self) -> None:
        if self.wa_throughput < 0 or self.wa_tier < 0 or self.wa_spam_after < 0:
            raise ValueError("wa_throughput, wa_tier and wa_spam_after must be >= 0")
        if self.wa_pair_interval_s < 0:
            raise ValueError("wa_pair_interval_s must be >= 0")
        unknown = sorted(set(self.wa_errors.values()) - WA_INJECTABLE)
        if unknown:
            raise ValueError(f"wa_errors: codes {unknown} are not among {sorted(WA_INJECTABLE)}")


def parse_page_tokens(spec: str) -> dict[str, str]:
    """Parse ``"page_id=token,page_id=token"`` (the `FANOUT_PAGE_TOKENS` form).

    Returns the config's orientation, token -> page_id. The error message never
    contains a token, only the position of the malformed item.
    """
    tokens: dict[str, str] = {}
    for position, item in enumerate(spec.split(","), start=1):
        item = item.strip()
        if not item:
            continue
        page_id, sep, token = item.partition("=")
        page_id, token = page_id.strip(), token.strip()
        if not sep or not page_id or not token:
            raise ValueError(f"item {position} is not of the form page_id=token")
        tokens[token] = page_id
    return tokens


def redacted(config: FakeGraphConfig) -> dict[str, object]:
    """The config as JSON-ready builtins, tokens masked (answers and logs never show one)."""
    out: dict[str, object] = msgspec.to_builtins(config)
    out["tokens"] = {f"***{n}": page for n, page in enumerate(config.tokens.values(), 1)}
    return out
