"""Settings: one frozen, typed object per service, read once from ``FANOUT_*`` variables.

Nothing below ``services.cli`` reads ``os.environ``; each service gets its settings object.
A missing or malformed variable raises ``SettingsError`` whose message names it, and the CLI
prints that one line and exits 2.
"""

from __future__ import annotations

import os
import re
import socket
import uuid
from collections.abc import Callable, Mapping
from typing import TypeVar

import msgspec

from shared import proxies

T = TypeVar("T")

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
# Meta brakes a Page that sends more than 40 messages/s (its inbox stops showing new
# messages and it cannot send until the volume drops); 300 calls/s is only the API ceiling,
# and audio and video have 10/s of their own. Both from
# https://developers.facebook.com/documentation/business-messaging/messenger-platform/overview/rate-limiting
DEFAULT_RATE_LIMIT = 40
META_RATE_CEILING = 300
DEFAULT_MEDIA_RATE_LIMIT = 10
# WhatsApp Cloud API: "up to 80 messages per second (mps) by default, and up to 1,000 mps by
# automatic upgrade" per number; one message every 6 s to the same person (error 131056).
# https://developers.facebook.com/documentation/business-messaging/whatsapp/throughput and
# https://developers.facebook.com/documentation/business-messaging/whatsapp/about-the-platform
DEFAULT_WA_RATE_LIMIT = 80
WA_RATE_CEILING = 1000
DEFAULT_WA_PAIR_INTERVAL_S = 6.0
# Messaging tiers: unique people reached outside a service window per moving 24 h, per business
# portfolio since 2025-10-07. None is "unlimited". A new business starts at 250.
# https://developers.facebook.com/documentation/business-messaging/whatsapp/messaging-limits
WA_TIERS: dict[str, int | None] = {
    "250": 250,
    "2000": 2000,
    "10000": 10_000,
    "100000": 100_000,
    "unlimited": None,
}
DEFAULT_WA_TIER = "250"


class SettingsError(Exception):
    """A FANOUT_* variable is missing or malformed; the message names it."""


class Secret:
    """A string that never shows itself in a repr, a log line or a traceback."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


class WhatsAppSettings(msgspec.Struct, frozen=True, kw_only=True):
    """The WhatsApp numbers and their limits, shared by both services' settings.

    A number is a sender like a page: its id sits in the job hash's ``page_id`` slot, so the
    limiter key, breaker, suppression list, window and tenant binding all work per number.
    """

    wa_tokens: dict[str, Secret] = {}  # phone_number_id -> token (FANOUT_WA_NUMBERS)
    wa_rate_limit: int = DEFAULT_WA_RATE_LIMIT  # messages/s per number, 0 = unlimited
    wa_rate_limits: dict[str, int] = {}  # per-number overrides
    wa_pair_interval_s: float = DEFAULT_WA_PAIR_INTERVAL_S  # to one person from one number
    wa_portfolios: dict[str, str] = {}  # number -> its business portfolio
    wa_tiers: dict[str, int | None] = {}  # portfolio (or lone number) -> tier, None = unlimited
    wa_tier_default: int | None = WA_TIERS[DEFAULT_WA_TIER]

    def wa_rate_for(self, number: str) -> int:
        return self.wa_rate_limits.get(number, self.wa_rate_limit)

    def portfolio_of(self, number: str) -> str:
        """The portfolio whose tier the number shares; a number in none is its own."""
        return self.wa_portfolios.get(number, number)

    def tier_for(self, number: str) -> int | None:
        """Unique people the number's portfolio may reach outside a service window per moving
        24 h; None is unlimited."""
        return self.wa_tiers.get(self.portfolio_of(number), self.wa_tier_default)


class ProducerSettings(WhatsAppSettings, frozen=True, kw_only=True):
    redis_url: str
    redis_cluster: str  # "auto", "true" or "false"
    api_tokens: dict[str, Secret]  # tenant -> token
    page_ids: frozenset[str]  # pages with a configured token
    tenant_pages: dict[str, frozenset[str]]  # tenant -> the pages it may send as
    shards: int
    chunk_size: int
    window: int
    max_body: int
    max_recipients: int
    max_upload: int
    retention_s: int
    callback_allow: tuple[str, ...]  # hosts or CIDRs a callback may target despite being private
    log_level: str
    # Meta's webhooks: the app secret signs every POST; the verify token answers Meta's
    # subscription check. Unset: the receiver refuses (401 / 403) and says so at start.
    app_secret: Secret | None = None
    webhook_verify_token: Secret | None = None
    # Test sends (services/producer/testsend.py) post a few messages themselves: the page
    # tokens (already in the producer's environment, for page_ids) and the Graph endpoint.
    page_tokens: dict[str, Secret] = {}
    graph_url: str = "https://graph.facebook.com"
    graph_version: str = "v21.0"
    request_timeout_s: float = 20.0
    graph_proxy: str | None = None

    def owns(self, tenant: str, page_id: str) -> bool:
        """Whether the tenant may send as this page or WhatsApp number."""
        return page_id in self.tenant_pages.get(tenant, frozenset())

    def unbound_pages(self) -> list[str]:
        """Pages and numbers with a token that no tenant may use (worth a warning at start)."""
        bound = frozenset().union(*self.tenant_pages.values())
        return sorted((self.page_ids | frozenset(self.wa_tokens)) - bound)


class ConsumerSettings(WhatsAppSettings, frozen=True, kw_only=True):
    redis_url: str
    redis_cluster: str
    page_tokens: dict[str, Secret]  # page_id -> token
    graph_url: str
    graph_version: str
    shards: int
    concurrency: int
    claim_idle_ms: int
    block_ms: int
    max_deliveries: int
    max_attempts: int
    retry_budget_s: float  # of transient answers per recipient, not counting a held page's time
    request_timeout_s: float
    drain_s: float
    consumer_name: str
    metrics_port: int
    rate_limit: int  # default permits/s per page, 0 = unlimited
    page_rate_limits: dict[str, int]  # per-page overrides
    media_rate_limit: int  # audio and video permits/s per page, on top of the page's; 0 = none
    page_media_rate_limits: dict[str, int]  # per-page overrides
    rate_burst_ms: int
    retention_s: int
    callback_secrets: dict[str, Secret]  # tenant -> HMAC key for X-Fanout-Signature
    callback_allow: tuple[str, ...]
    callback_attempts: int
    log_level: str
    # The egress proxy to the Graph API (HTTPS_PROXY/NO_PROXY, see shared.proxies), or None.
    graph_proxy: str | None = None

    def rate_for(self, page_id: str) -> int:
        return self.page_rate_limits.get(page_id, self.rate_limit)

    def media_rate_for(self, page_id: str) -> int:
        return self.page_media_rate_limits.get(page_id, self.media_rate_limit)

    def rate_warning(self) -> str | None:
        """One line naming the rates above Meta's ceiling, or None. Accepted all the same (a
        page may have an arrangement with Meta, and 0 and high rates serve fakes and
        benchmarks), but said once at start."""
        rates = {"FANOUT_RATE_LIMIT": self.rate_limit}
        rates |= {f"FANOUT_PAGE_RATE_LIMITS[{p}]": v for p, v in self.page_rate_limits.items()}
        above = [f"{name}={value}" for name, value in rates.items() if value > META_RATE_CEILING]
        if not above:
            return None
        return (
            f"{', '.join(above)}: above Meta's Send API ceiling of {META_RATE_CEILING}/s per"
            f" page (and Meta brakes a page sending more than {DEFAULT_RATE_LIMIT} messages/s)"
        )


class _Env:
    """Typed reads of one environment mapping, each error naming its variable."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    def raw(self, name: str, default: str | None) -> str:
        value = self._environ.get(name)
        if value is None or value.strip() == "":
            if default is None:
                raise SettingsError(f"{name} is not set")
            return default
        return value.strip()

    def parsed(self, name: str, default: str | None, parse: Callable[[str], T], what: str) -> T:
        value = self.raw(name, default)
        try:
            return parse(value)
        except ValueError:
            raise SettingsError(f"{name}={value!r} is not {what}") from None

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        value = self.parsed(name, str(default), int, "an integer")
        if not low <= value <= high:
            raise SettingsError(f"{name}={value} is out of range [{low}, {high}]")
        return value

    def number(self, name: str, default: float, low: float, high: float) -> float:
        value = self.parsed(name, str(default), float, "a number")
        if not low <= value <= high:
            raise SettingsError(f"{name}={value} is out of range [{low}, {high}]")
        return value

    def pairs(self, name: str, default: str | None) -> dict[str, Secret]:
        return self.parsed(name, default, _parse_pairs, "a list of key=value pairs")

    def optional_pairs(self, name: str) -> dict[str, Secret]:
        return self.pairs(name, None) if self._environ.get(name, "").strip() else {}

    def secret(self, name: str) -> Secret | None:
        value = self._environ.get(name, "").strip()
        return Secret(value) if value else None

    def rates(self, name: str, what: str = "page", high: int | None = None) -> dict[str, int]:
        rates = {}
        for page, value in self.optional_pairs(name).items():
            if not value.reveal().isdigit():
                raise SettingsError(f"{name}: the rate for {what} {page} is not a whole number")
            rates[page] = int(value.reveal())
            if high is not None and rates[page] > high:
                raise SettingsError(
                    f"{name}: the rate for {what} {page} is out of range [0, {high}]"
                )
        return rates

    def duration_s(self, name: str, default: str) -> int:
        """Seconds, written as 3600, 45s, 30m, 12h or 7d."""
        text = self.raw(name, default).lower()
        match = re.fullmatch(r"(\d+)\s*([smhd]?)", text)
        if match is None or int(match.group(1)) == 0:
            raise SettingsError(f"{name}={text!r} is not a duration like 3600, 30m, 12h or 7d")
        unit = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
        return int(match.group(1)) * unit

    def words(self, name: str) -> tuple[str, ...]:
        return tuple(w.strip() for w in self.raw(name, "").split(",") if w.strip())

    def redis_url(self) -> str:
        url = self.raw("FANOUT_REDIS_URL", DEFAULT_REDIS_URL)
        if not re.match(r"^(redis|rediss|unix)://", url):
            raise SettingsError(
                f"FANOUT_REDIS_URL must start with redis://, rediss:// or unix:// (got {url!r})"
            )
        return url

    def redis_cluster(self) -> str:
        value = self.raw("FANOUT_REDIS_CLUSTER", "auto").lower()
        if value not in {"auto", "true", "false"}:
            raise SettingsError(f"FANOUT_REDIS_CLUSTER={value!r} is not auto, true or false")
        return value

    def log_level(self) -> str:
        level = self.raw("FANOUT_LOG_LEVEL", "INFO").upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise SettingsError(f"FANOUT_LOG_LEVEL={level!r} is not DEBUG, INFO, WARNING or ERROR")
        return level


def _parse_pairs(text: str) -> dict[str, Secret]:
    pairs: dict[str, Secret] = {}
    for item in text.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ValueError(item)
        pairs[key.strip()] = Secret(value.strip())
    return pairs


_TENANT_PAGES = "FANOUT_TENANT_PAGES"


def _tenant_pages(
    env: _Env,
    tenants: frozenset[str],
    page_ids: frozenset[str],
    numbers: frozenset[str] = frozenset(),
) -> dict[str, frozenset[str]]:
    """FANOUT_TENANT_PAGES (``tenant=page|page,...``): which tenant may send as which page or
    WhatsApp number (``numbers``, from FANOUT_WA_NUMBERS; bound exactly like pages).
    Without it a lone tenant owns every page; with several, guessing would let one tenant send
    as another's page, so it is required."""
    senders = page_ids | numbers
    text = env.raw(_TENANT_PAGES, "")
    if not text:
        if len(tenants) > 1:
            raise SettingsError(
                f"{_TENANT_PAGES} is not set: with more than one tenant in FANOUT_API_TOKENS,"
                " bind each page to its tenant (tenant=page|page,...)"
            )
        return dict.fromkeys(tenants, senders)
    owner: dict[str, str] = {}
    bindings: dict[str, frozenset[str]] = {}
    for item in text.split(","):
        tenant, sep, rest = (part.strip() for part in item.partition("="))
        pages = [page.strip() for page in rest.split("|")]
        if not sep or not tenant or not all(pages):
            raise SettingsError(f"{_TENANT_PAGES}: {item.strip()!r} is not tenant=page|page")
        if tenant not in tenants:
            raise SettingsError(f"{_TENANT_PAGES}: tenant {tenant!r} is not in FANOUT_API_TOKENS")
        if tenant in bindings:
            raise SettingsError(f"{_TENANT_PAGES}: tenant {tenant!r} is named twice")
        for page in pages:
            if page not in senders and not numbers:
                raise SettingsError(
                    f"{_TENANT_PAGES}: page {page} has no token in FANOUT_PAGE_TOKENS"
                )
            if page not in senders:
                raise SettingsError(
                    f"{_TENANT_PAGES}: {page} has no token in FANOUT_PAGE_TOKENS"
                    " or FANOUT_WA_NUMBERS"
                )
            if owner.setdefault(page, tenant) != tenant:
                raise SettingsError(
                    f"{_TENANT_PAGES}: page {page} is bound to both {owner[page]!r} and {tenant!r}"
                )
        bindings[tenant] = frozenset(pages)
    return bindings


def producer_settings(environ: Mapping[str, str] | None = None) -> ProducerSettings:
    env = _Env(os.environ if environ is None else environ)
    api_tokens = env.pairs("FANOUT_API_TOKENS", None)
    wa = _whatsapp(env)
    page_tokens = _page_tokens(env, wa)
    page_ids = frozenset(page_tokens)
    graph_url, version = _graph(env)
    return ProducerSettings(
        **msgspec.structs.asdict(wa),
        redis_url=env.redis_url(),
        redis_cluster=env.redis_cluster(),
        api_tokens=api_tokens,
        page_ids=page_ids,
        tenant_pages=_tenant_pages(env, frozenset(api_tokens), page_ids, frozenset(wa.wa_tokens)),
        shards=env.integer("FANOUT_SHARDS", 4, 1, 1024),
        chunk_size=env.integer("FANOUT_CHUNK_SIZE", 100, 1, 10_000),
        window=env.integer("FANOUT_WINDOW", 8, 1, 1000),
        max_body=env.integer("FANOUT_MAX_BODY", 32 * 1024 * 1024, 1024, 1024**3),
        max_recipients=env.integer("FANOUT_MAX_RECIPIENTS", 1_000_000, 1, 100_000_000),
        max_upload=env.integer("FANOUT_MAX_UPLOAD", 256 * 1024 * 1024, 1024, 64 * 1024**3),
        retention_s=env.duration_s("FANOUT_RETENTION", "7d"),
        callback_allow=env.words("FANOUT_CALLBACK_ALLOW"),
        log_level=env.log_level(),
        app_secret=env.secret("FANOUT_APP_SECRET"),
        webhook_verify_token=env.secret("FANOUT_WEBHOOK_VERIFY_TOKEN"),
        page_tokens=page_tokens,
        graph_url=graph_url,
        graph_version=version,
        request_timeout_s=env.number("FANOUT_REQUEST_TIMEOUT_S", 20.0, 0.1, 300.0),
        graph_proxy=_graph_proxy(graph_url, os.environ if environ is None else environ),
    )


def _page_tokens(env: _Env, wa: WhatsAppSettings) -> dict[str, Secret]:
    """FANOUT_PAGE_TOKENS: required, unless the deployment sends on WhatsApp only."""
    if wa.wa_tokens:
        return env.optional_pairs("FANOUT_PAGE_TOKENS")
    return env.pairs("FANOUT_PAGE_TOKENS", None)


_WA_NUMBERS = "FANOUT_WA_NUMBERS"
_WA_PORTFOLIOS = "FANOUT_WA_PORTFOLIOS"
_WA_TIERS = "FANOUT_WA_TIERS"


def _whatsapp(env: _Env) -> WhatsAppSettings:
    """FANOUT_WA_*: the numbers with their tokens, rates, pair interval, portfolios and tiers."""
    tokens = env.optional_pairs(_WA_NUMBERS)
    for number in tokens:
        if not re.fullmatch(r"[0-9]{1,32}", number):
            raise SettingsError(f"{_WA_NUMBERS}: {number!r} is not a phone_number_id (digits)")
    portfolios = _wa_portfolios(env)
    tiers = {
        name: _wa_tier(f"{_WA_TIERS}: {name}", value.reveal())
        for name, value in env.optional_pairs(_WA_TIERS).items()
    }
    for name in tiers.keys() & portfolios.keys():
        # Meta sets the tier per portfolio since 2025-10-07: one number's own would be ignored.
        raise SettingsError(
            f"{_WA_TIERS}: number {name} is in portfolio {portfolios[name]!r}"
            f" ({_WA_PORTFOLIOS}): set the portfolio's tier, which all its numbers share"
        )
    return WhatsAppSettings(
        wa_tokens=tokens,
        wa_rate_limit=env.integer(
            "FANOUT_WA_RATE_LIMIT", DEFAULT_WA_RATE_LIMIT, 0, WA_RATE_CEILING
        ),
        wa_rate_limits=env.rates("FANOUT_WA_RATE_LIMITS", "number", WA_RATE_CEILING),
        wa_pair_interval_s=env.number(
            "FANOUT_WA_PAIR_INTERVAL_S", DEFAULT_WA_PAIR_INTERVAL_S, 0.0, 86400.0
        ),
        wa_portfolios=portfolios,
        wa_tiers=tiers,
        wa_tier_default=_wa_tier(
            "FANOUT_WA_TIER_DEFAULT", env.raw("FANOUT_WA_TIER_DEFAULT", DEFAULT_WA_TIER)
        ),
    )


def _wa_tier(name: str, text: str) -> int | None:
    tier = text.strip().lower().replace("_", "").replace(",", "")
    if tier not in WA_TIERS:
        raise SettingsError(f"{name}={text!r} is not 250, 2000, 10000, 100000 or unlimited")
    return WA_TIERS[tier]


def _wa_portfolios(env: _Env) -> dict[str, str]:
    """FANOUT_WA_PORTFOLIOS (``portfolio=number|number,...``): number -> its portfolio."""
    text = env.raw(_WA_PORTFOLIOS, "")
    portfolio_of: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        portfolio, sep, rest = (part.strip() for part in item.partition("="))
        numbers = [number.strip() for number in rest.split("|")]
        if not sep or not portfolio or not all(numbers):
            raise SettingsError(f"{_WA_PORTFOLIOS}: {item!r} is not portfolio=number|number")
        for number in numbers:
            if portfolio_of.setdefault(number, portfolio) != portfolio:
                raise SettingsError(
                    f"{_WA_PORTFOLIOS}: number {number} is in both"
                    f" {portfolio_of[number]!r} and {portfolio!r}"
                )
    return portfolio_of


def _graph(env: _Env) -> tuple[str, str]:
    """FANOUT_GRAPH_URL and FANOUT_GRAPH_VERSION, checked."""
    graph_url = env.raw("FANOUT_GRAPH_URL", "https://graph.facebook.com").rstrip("/")
    if not re.match(r"^https?://[^/?#]+(/[^?#]*)?$", graph_url):
        raise SettingsError(f"FANOUT_GRAPH_URL={graph_url!r} is not an http(s) URL")
    version = env.raw("FANOUT_GRAPH_VERSION", "v21.0")
    if not re.fullmatch(r"v\d+\.\d+", version):
        raise SettingsError(f"FANOUT_GRAPH_VERSION={version!r} is not like v21.0")
    return graph_url, version


def consumer_settings(environ: Mapping[str, str] | None = None) -> ConsumerSettings:
    env = _Env(os.environ if environ is None else environ)
    claim_idle_ms = env.integer("FANOUT_CLAIM_IDLE_MS", 30_000, 100, 3_600_000)
    graph_url, version = _graph(env)
    name = env.raw("FANOUT_CONSUMER_NAME", f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}")
    wa = _whatsapp(env)
    return ConsumerSettings(
        **msgspec.structs.asdict(wa),
        redis_url=env.redis_url(),
        redis_cluster=env.redis_cluster(),
        page_tokens=_page_tokens(env, wa),
        graph_url=graph_url,
        graph_version=version,
        shards=env.integer("FANOUT_SHARDS", 4, 1, 1024),
        concurrency=env.integer("FANOUT_CONCURRENCY", 256, 1, 10_000),
        claim_idle_ms=claim_idle_ms,
        # BLOCK must stay well under the Redis client's socket timeout (see shared/redis.py).
        block_ms=env.integer("FANOUT_BLOCK_MS", 2_000, 10, 4_000),
        max_deliveries=env.integer("FANOUT_MAX_DELIVERIES", 5, 1, 1000),
        max_attempts=env.integer("FANOUT_MAX_ATTEMPTS", 5, 1, 100),
        retry_budget_s=env.number("FANOUT_RETRY_BUDGET_S", 600.0, 1.0, 7 * 86400.0),
        request_timeout_s=env.number("FANOUT_REQUEST_TIMEOUT_S", 20.0, 0.1, 300.0),
        drain_s=env.number("FANOUT_DRAIN_S", 20.0, 0.0, 3600.0),
        consumer_name=name,
        metrics_port=env.integer("FANOUT_METRICS_PORT", 9100, 0, 65535),
        rate_limit=env.integer("FANOUT_RATE_LIMIT", DEFAULT_RATE_LIMIT, 0, 1_000_000),
        page_rate_limits=env.rates("FANOUT_PAGE_RATE_LIMITS"),
        media_rate_limit=env.integer(
            "FANOUT_MEDIA_RATE_LIMIT", DEFAULT_MEDIA_RATE_LIMIT, 0, 1_000_000
        ),
        page_media_rate_limits=env.rates("FANOUT_PAGE_MEDIA_RATE_LIMITS"),
        rate_burst_ms=env.integer("FANOUT_RATE_BURST_MS", 50, 1, 1000),
        retention_s=env.duration_s("FANOUT_RETENTION", "7d"),
        callback_secrets=env.optional_pairs("FANOUT_CALLBACK_SECRETS"),
        callback_allow=env.words("FANOUT_CALLBACK_ALLOW"),
        callback_attempts=env.integer("FANOUT_CALLBACK_ATTEMPTS", 8, 1, 100),
        log_level=env.log_level(),
        graph_proxy=_graph_proxy(graph_url, os.environ if environ is None else environ),
    )


def _graph_proxy(graph_url: str, environ: Mapping[str, str]) -> str | None:
    """HTTPS_PROXY and friends are the standard variables every HTTP client reads, not
    FANOUT_ ones: one egress setting serves the whole pod."""
    try:
        return proxies.proxy_for(graph_url, environ)
    except proxies.ProxyError as exc:
        raise SettingsError(str(exc)) from None
