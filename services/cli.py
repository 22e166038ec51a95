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
once with a job id; consumers deliver every message through the Messenger Send API or the
WhatsApp Cloud API (a job's channel) and keep counters anyone can read. Settings come from
FANOUT_* environment variables (see README).
"""

_EPILOG = """\
examples:
  fanout demo                                  everything on this machine, one job, a live bar
  fanout fakegraph --port 8090 --latency-ms 5  the local Messenger stand-in
  export FANOUT_URL=http://127.0.0.1:8000 FANOUT_TOKEN=local-api-token
  fanout send contacts.csv --page 1234567890 --text "Hi {{first_name|there}}" --watch
  fanout send people.csv --number 106540352242922 --template order_shipped --watch   WhatsApp
  fanout --json status 2-9f3c...               --url, --token, --json before or after COMMAND

`fanout COMMAND --help` shows each command's options, choices, examples and exit codes.
"""


def _run_producer(args: argparse.Namespace) -> int:
    import uvicorn

    from services.producer.app import create_app
    from shared.listen import bound_port, listen

    settings = producer_settings()
    # Bound here, not by uvicorn, so a taken port is one line and exit 2, not a traceback
    # after the app had started.
    sock = listen(args.host, args.port, "--port")
    # page tokens too: the producer sends test messages itself (services/producer/testsend.py)
    secrets = [*settings.api_tokens.values(), *settings.page_tokens.values()]
    secrets += settings.wa_tokens.values()
    logs.setup("producer", settings.log_level, (s.reveal() for s in secrets))
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
    secrets += settings.wa_tokens.values()
    logs.setup("consumer", settings.log_level, (s.reveal() for s in secrets))
    logs.started("consumer", settings)
    uvloop.run(serve(settings, probe_socket))
    return 0


def _run_fakegraph(args: argparse.Namespace) -> int:
    from services.fakegraph.server import main

    return main(args.rest)


def _run_demo(args: argparse.Namespace) -> int:
    from services.demo import main

    return main(
        recipients=args.recipients,
        consumers=args.consumers,
        rate=args.rate,
        stay=args.stay,
        channel=args.channel,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fanout",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    client.global_options(parser, under_command=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "producer",
        help="run the HTTP API (jobs in, status out, the job page at /)",
        description="Serve the HTTP API, the job page at GET / and /metrics until SIGTERM.",
        epilog="example:\n  FANOUT_API_TOKENS=acme=local-api-token "
        "FANOUT_PAGE_TOKENS=1234567890=EAA... \\\n"
        "  FANOUT_REDIS_URL=redis://127.0.0.1:6379/0 fanout producer --port 8000",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
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
        epilog="example:\n  FANOUT_PAGE_TOKENS=1234567890=EAA... "
        "FANOUT_REDIS_URL=redis://127.0.0.1:6379/0 \\\n  fanout consumer --name worker-1",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    c.add_argument("--name", help="consumer name in the group (default: host name + random)")
    c.set_defaults(run=_run_consumer)

    f = sub.add_parser(
        "fakegraph",
        help="run a local stand-in for the Messenger Send API and WhatsApp Cloud API",
        add_help=False,
    )
    f.add_argument("rest", nargs=argparse.REMAINDER)
    f.set_defaults(run=_run_fakegraph)

    d = sub.add_parser(
        "demo",
        help="run everything locally and send a job with a live progress bar",
        description="Start Redis (unless FANOUT_REDIS_URL is set), fakegraph, the producer and "
        "consumers; submit a job; show its progress until done; stop everything.",
        epilog="examples:\n  fanout demo\n  fanout demo --recipients 100000 --consumers 3 --rate 40"
        "\n  fanout demo --channel whatsapp --rate 80   a template job from a WhatsApp number"
        "\n  fanout demo --stay     keep running for the job page; Ctrl-C stops\n\n"
        "exit codes: 0 the job completed and fakegraph saw every send, 1 otherwise, 130 Ctrl-C",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d.add_argument("--recipients", type=int, default=10_000, help="job size (default 10000)")
    d.add_argument("--consumers", type=int, default=2, help="consumer processes (default 2)")
    d.add_argument(
        "--rate",
        type=int,
        default=0,
        help="fleet-wide messages/s for the demo's fake page, set as its FANOUT_PAGE_RATE_LIMITS"
        " (default 0: unlimited; a real page gets FANOUT_RATE_LIMIT, default 40/s, Meta's brake);"
        " with --channel whatsapp, the fake number's FANOUT_WA_RATE_LIMITS (default 0: 1000/s,"
        " the upgraded ceiling; a real number gets FANOUT_WA_RATE_LIMIT, default 80/s)",
    )
    d.add_argument(
        "--channel",
        choices=("messenger", "whatsapp"),
        default="messenger",
        help="send the job on Messenger (a text from a page) or WhatsApp (an approved template"
        " from a number, its receipts from fakegraph's WhatsApp webhooks) (default messenger)",
    )
    d.add_argument(
        "--stay",
        action="store_true",
        help="after the job, keep everything running and print the job page's address and "
        "API token, until Ctrl-C",
    )
    d.set_defaults(run=_run_demo)
    client.add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    if "fakegraph" in words[:1]:
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
    except client.Interrupted as exc:
        print(exc, file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
