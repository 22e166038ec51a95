"""The ``fanout`` command: one entry point for every service and the demo."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from services import client
from shared import logs
from shared.settings import SettingsError, consumer_settings, producer_settings

_DESCRIPTION = """\
fanout: bulk message delivery on Redis Streams.

A client posts one message and up to millions of recipients to the producer, which answers at
once with a job id; consumers deliver every message through the Messenger Send API and keep
counters anyone can read. Settings come from FANOUT_* environment variables (see README).
"""


def _run_producer(args: argparse.Namespace) -> int:
    import uvicorn

    from services.producer.app import create_app
    from shared.listen import bound_port, listen

    settings = producer_settings()
    # Bound here, not by uvicorn, so a taken port is one line and exit 2, not a traceback
    # after the app had started.
    sock = listen(args.host, args.port, "--port")
    logs.setup("producer", settings.log_level, (s.reveal() for s in settings.api_tokens.values()))
    logs.started("producer", settings)
    # uvicorn says where it listens only for sockets it bound itself; --port 0 needs telling.
    where = {"host": args.host, "port": bound_port(sock)}
    logging.getLogger("fanout.producer").info("listening", extra=where)
    config = uvicorn.Config(
        create_app(settings),
        host=args.host,
        port=args.port,
        log_config=None,
        access_log=False,
        loop="uvloop",
        http="httptools",
        timeout_graceful_shutdown=10,
    )
    uvicorn.Server(config).run(sockets=[sock])
    return 0


def _run_consumer(args: argparse.Namespace) -> int:
    import os

    import uvloop

    from services.consumer import health
    from services.consumer.main import serve

    if args.name:
        os.environ["FANOUT_CONSUMER_NAME"] = args.name
    settings = consumer_settings()
    # Before the first log line: a taken port is one line on stderr and exit 2.
    probe_socket = health.bind(settings.metrics_port)
    secrets = [*settings.page_tokens.values(), *settings.callback_secrets.values()]
    logs.setup("consumer", settings.log_level, (s.reveal() for s in secrets))
    logs.started("consumer", settings)
    uvloop.run(serve(settings, probe_socket))
    return 0


def _run_fakegraph(args: argparse.Namespace) -> int:
    from services.fakegraph.server import main

    return main(args.rest)


def _run_demo(args: argparse.Namespace) -> int:
    from services.demo import main

    return main(recipients=args.recipients, consumers=args.consumers, rate=args.rate)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fanout", description=_DESCRIPTION, formatter_class=argparse.RawTextHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("producer", help="run the HTTP API (jobs in, status out)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument(
        "--port",
        type=int,
        default=8000,
        help="port to listen on (default 8000; 0: a free one, logged)",
    )
    p.set_defaults(run=_run_producer)

    c = sub.add_parser(
        "consumer",
        help="run a delivery worker (scale these out)",
        description="Deliver chunks from every shard's work stream until SIGTERM, then drain.",
    )
    c.add_argument("--name", help="consumer name in the group (default: host name + random)")
    c.set_defaults(run=_run_consumer)

    f = sub.add_parser(
        "fakegraph",
        help="run a local stand-in for the Messenger Send API",
        add_help=False,
    )
    f.add_argument("rest", nargs=argparse.REMAINDER)
    f.set_defaults(run=_run_fakegraph)

    d = sub.add_parser(
        "demo",
        help="run everything locally and send a job with a live progress bar",
        description="Start Redis (unless FANOUT_REDIS_URL is set), fakegraph, the producer and "
        "consumers; submit a job; show its progress until done; stop everything.",
    )
    d.add_argument("--recipients", type=int, default=10_000, help="job size (default 10000)")
    d.add_argument("--consumers", type=int, default=2, help="consumer processes (default 2)")
    d.add_argument(
        "--rate",
        type=int,
        default=0,
        help="fleet-wide messages/s for the demo's fake page, set as its FANOUT_PAGE_RATE_LIMITS"
        " (default 0: unlimited; a real page gets FANOUT_RATE_LIMIT, default 40/s, Meta's brake)",
    )
    d.set_defaults(run=_run_demo)
    client.add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    if words[:1] == ["fakegraph"]:
        # Its options are its own parser's: argparse's REMAINDER stops at a leading option, so
        # `fanout fakegraph --port 8090` would be refused by the top-level parser.
        return _run_fakegraph(argparse.Namespace(rest=words[1:]))
    args = build_parser().parse_args(words)
    try:
        code: int = args.run(args)
    except SettingsError as exc:
        print(f"fanout {args.command}: {exc}", file=sys.stderr)
        return 2
    except client.CliError as exc:
        print(f"fanout {args.command}: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
