"""A local stand-in for the Messenger Send API, fast enough never to be the bottleneck.

    create_server(config) -> FakeGraph        config (mutable at runtime) + stats
    await serve(fake, host, port) -> Server   listening; port 0 picks a free one
    main(argv) -> int                         the `fanout fakegraph` / `python -m` CLI

Module map: `config.py` (what to simulate), `graph.py` (routes, checks, test hooks),
`stats.py` (counters), `responses.py` (Graph's answers as bytes), `protocol.py` (HTTP/1.1
on asyncio), this module (wiring and the command line).
"""

from __future__ import annotations

import argparse
import asyncio
import asyncio.base_events
import contextlib
import json
import os
import signal
import sys
from collections.abc import Callable

import msgspec

from services.fakegraph.config import FakeGraphConfig, parse_page_tokens, redacted
from services.fakegraph.graph import FakeGraph
from services.fakegraph.protocol import GraphProtocol
from services.fakegraph.webhooks import Emitter

__all__ = ["FakeGraph", "FakeGraphConfig", "create_server", "loop_factory", "main", "serve"]


def create_server(config: FakeGraphConfig) -> FakeGraph:
    """A fake Graph API with this config; nothing listens until `serve()`."""
    return FakeGraph(config)


async def serve(fake: FakeGraph, host: str, port: int) -> asyncio.base_events.Server:
    """Listen on host:port (0 = any free port) and answer with `fake`; returns the started server.

    To stop: `server.close()`, `fake.close_connections()`, `await server.wait_closed()`.
    """
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: GraphProtocol(fake, loop), host, port, reuse_address=True, backlog=4096
    )


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """uvloop's event loop when installed, else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


_DESCRIPTION = """\
Local stand-in for the Messenger Send API (POST /{version}/me/messages and
/{version}/{page_id}/messages). Answers success, or Graph-shaped errors on demand:
190 bad/revoked token, 100 bad body, 100/1893061 a retired message tag, 613 rate limit,
HTTP 500 code 2, 551 blocked, an outage (HTTP 503 code 2), a restricted page (10/1893063),
the 24 h window (10/2018278), audio/video beyond --media-rate-limit (613). The Attachment
Upload API: POST /{version}/me/message_attachments answers {"attachment_id"}; a send by
attachment_id needs one uploaded for its page.
Test hooks: GET /_fake/stats, GET /_fake/delivered, POST /_fake/reset,
GET /_fake/texts and GET /_fake/bodies (per PSID, the last text and the last body sent),
GET|POST /_fake/config (JSON subset of the options below, live; also outage_until),
GET|POST /_fake/window ({"<psid>": <Unix time of their last message>}),
GET /_fake/refused (per code/subcode, per PSID: what the knobs refused),
GET /_fake/attachments (uploads, URL fetches, sends per attachment_id, audio/video times;
upload_fail and upload_fail_times make uploads fail, through /_fake/config).
Answers gone bad after the message was delivered, each a fraction of deliveries, through
/_fake/config: html_502_rate (a proxy's HTML 502), garbled_200_rate (200, not JSON),
cut_rate (connection closed mid-answer), hang_rate (no answer at all).
WhatsApp Cloud API: POST /{version}/{phone_number_id}/messages with messaging_product
"whatsapp" (text or template) answers {"contacts", "messages": [{"id": "wamid...."}]} or
WhatsApp's errors: 100/131008/131009 bad body, 130429 beyond --wa-throughput, 131056 a second
send to a person within the pair interval, 131048 after wa_spam_after sends, injected codes
per recipient (wa_errors: 131026, 131050, 131047, ...), 131047 with wa_enforce_window; the
tier (wa_tier) is counted, not refused. GET /_fake/whatsapp: every accepted send with its
time, pair and tier violations, people reached.
Runs until SIGINT/SIGTERM; prints one JSON line saying where it listens."""


def _rate(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a fraction between 0 and 1")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


def _argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fanout fakegraph",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    add("--port", type=int, default=8090, help="port; 0 picks a free one (default: %(default)s)")
    add(
        "--latency-ms",
        type=_non_negative_float,
        default=0.0,
        metavar="MS",
        help="delay every answer by MS milliseconds, without blocking (default: 0)",
    )
    add(
        "--fail-rate",
        type=_rate,
        default=0.0,
        metavar="FRACTION",
        help="answer this fraction of sends HTTP 500, code 2, transient (default: 0)",
    )
    add(
        "--blocked-rate",
        type=_rate,
        default=0.0,
        metavar="FRACTION",
        help="answer 551 'person isn't available' to this fraction of PSIDs, always the "
        "same ones (crc32 of the PSID) (default: 0)",
    )
    add("--blocked", default="", metavar="PSID,...", help="PSIDs always answered 551")
    add(
        "--rate-limit",
        type=_non_negative_int,
        default=0,
        metavar="N",
        help="per page, answer 613 to requests beyond N in one wall-clock second "
        "(default: 0 = no limit)",
    )
    add(
        "--media-rate-limit",
        type=_non_negative_int,
        default=10,
        metavar="N",
        help="per page, answer 613 to audio and video sends beyond N in one wall-clock second "
        "(default: 10, Meta's limit; 0 = no limit)",
    )
    add(
        "--tokens",
        default=None,
        metavar="PAGE=TOKEN,...",
        help="accept only these page tokens, each for its page (others answer 190); "
        "default: any non-empty token, the page taken from the URL",
    )
    add(
        "--tokens-env",
        default=None,
        metavar="VAR",
        help="read PAGE=TOKEN,... from environment variable VAR instead (keeps tokens "
        "out of the process list), e.g. FANOUT_PAGE_TOKENS",
    )
    add(
        "--wa-tokens-env",
        default=None,
        metavar="VAR",
        help="also accept these WhatsApp number tokens, NUMBER=TOKEN,... read from environment "
        "variable VAR (e.g. FANOUT_WA_NUMBERS)",
    )
    add(
        "--wa-throughput",
        type=_non_negative_int,
        default=0,
        metavar="N",
        help="per WhatsApp number, answer 130429 to sends beyond N in one wall-clock second "
        "(default: 0 = no limit; Meta's default is 80)",
    )
    add(
        "--wa-tier",
        type=_non_negative_int,
        default=0,
        metavar="N",
        help="count sends to people beyond N new ones per number per 24 h as tier_violations "
        "(default: 0 = no tier)",
    )
    add("--revoked", action="store_true", help="answer every send 190, subcode 463")
    add("--seed", type=int, default=0, help="random seed of --fail-rate draws (default: 0)")
    add(
        "--restricted",
        default="",
        metavar="PAGE,...",
        help="pages whose sends answer 10/1893063 (temporarily restricted from sending)",
    )
    add(
        "--webhook-url",
        default=None,
        metavar="URL",
        help="play Meta's webhooks: after each delivered send POST its echo (with metadata), "
        "then delivery and read watermarks, signed with the app secret, to URL (e.g. "
        "http://127.0.0.1:8080/webhooks/messenger); POST /_fake/inbound and "
        "/_fake/enforcement send people's messages and policy enforcement; GET /_fake/receipts",
    )
    add(
        "--wa-webhook-url",
        default=None,
        metavar="URL",
        help="play WhatsApp's webhooks: after each accepted WhatsApp send POST its statuses "
        "(sent, delivered, read, some failed; out of order, some twice; with its "
        "biz_opaque_callback_data), signed with the app secret, to URL (e.g. "
        "http://127.0.0.1:8080/webhooks/whatsapp); POST /_fake/wa_inbound and "
        "/_fake/wa_quality send people's messages and quality changes",
    )
    add(
        "--app-secret-env",
        default="FANOUT_APP_SECRET",
        metavar="VAR",
        help="environment variable holding the app secret that signs webhooks "
        "(default: %(default)s; kept out of the process list)",
    )
    add(
        "--webhook-config",
        default="{}",
        metavar="JSON",
        help='delays and rates, e.g. {"delivery_delay_ms": 150, "read_rate": 0.5, '
        '"duplicate_rate": 0.1, "reorder_rate": 0.1}; live through POST /_fake/webhooks',
    )
    add(
        "--enforce-window",
        action="store_true",
        help="answer 10/2018278 to RESPONSE/UPDATE sends to people whose last message "
        "(POST /_fake/window) is over 24 h old or unknown",
    )
    return parser


def _config_from(args: argparse.Namespace, parser: argparse.ArgumentParser) -> FakeGraphConfig:
    spec: str | None = args.tokens
    if args.tokens_env is not None:
        if spec is not None:
            parser.error("give --tokens or --tokens-env, not both")
        spec = os.environ.get(args.tokens_env)
        if spec is None:
            parser.error(f"--tokens-env: environment variable {args.tokens_env} is not set")
    try:
        tokens = parse_page_tokens(spec) if spec else {}
    except ValueError as exc:
        parser.error(f"--tokens: {exc}")
    if args.wa_tokens_env is not None:
        wa_spec = os.environ.get(args.wa_tokens_env)
        if wa_spec is None:
            parser.error(f"--wa-tokens-env: environment variable {args.wa_tokens_env} is not set")
        try:
            tokens |= parse_page_tokens(wa_spec)
        except ValueError as exc:
            parser.error(f"--wa-tokens-env: {exc}")
    return FakeGraphConfig(
        latency_ms=args.latency_ms,
        fail_rate=args.fail_rate,
        blocked_rate=args.blocked_rate,
        blocked=[p.strip() for p in args.blocked.split(",") if p.strip()],
        rate_limit=args.rate_limit,
        media_rate_limit=args.media_rate_limit,
        tokens=tokens,
        revoked=args.revoked,
        seed=args.seed,
        restricted_pages=[p.strip() for p in args.restricted.split(",") if p.strip()],
        enforce_window=args.enforce_window,
        wa_throughput=args.wa_throughput,
        wa_tier=args.wa_tier,
    )


def _log(event: str, **fields: object) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


async def _run(config: FakeGraphConfig, host: str, port: int, emitter: Emitter | None) -> int:
    fake = create_server(config)
    fake.webhooks = emitter
    try:
        server = await serve(fake, host, port)
    except OSError as exc:
        _log("fakegraph.error", error=f"cannot listen on {host}:{port}: {exc.strerror}")
        return 1
    bound = server.sockets[0].getsockname()
    loop = asyncio.get_running_loop()
    _log(
        "fakegraph.listening",
        url=f"http://{host}:{bound[1]}",
        host=host,
        port=bound[1],
        loop=type(loop).__module__.split(".")[0],
        config=redacted(config),
    )
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
            loop.add_signal_handler(signum, stop.set)  # not in a non-main thread
    await stop.wait()
    server.close()
    fake.close_connections()
    await server.wait_closed()
    _log("fakegraph.stopped", requests=fake.stats.requests, delivered=fake.stats.delivered)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the fake Graph API until SIGINT/SIGTERM; 0 on a clean stop."""
    parser = _argument_parser()
    args = parser.parse_args(argv)
    config = _config_from(args, parser)
    emitter = _emitter_from(args, parser)
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(_run(config, args.host, args.port, emitter))


def _emitter_from(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Emitter | None:
    if args.webhook_url is None and args.wa_webhook_url is None:
        return None
    secret = os.environ.get(args.app_secret_env, "")
    if not secret:
        flag = "--webhook-url" if args.webhook_url is not None else "--wa-webhook-url"
        parser.error(f"{flag}: environment variable {args.app_secret_env} is not set")
    emitter = Emitter(args.webhook_url or "", secret, wa_url=args.wa_webhook_url)
    try:
        emitter.configure(args.webhook_config.encode())
    except msgspec.MsgspecError as exc:
        parser.error(f"--webhook-config: {exc}")
    return emitter
