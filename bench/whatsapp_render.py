"""What building a WhatsApp send body costs the consumer, in microseconds per recipient.

    .venv/bin/python bench/whatsapp_render.py [--recipients 100000]

Messages through ``WhatsAppRequest.body`` + ``tagged`` (the whole body a sender POSTs): a
template without placeholders (encoded once per job), a personalised template and text whose
placeholders sit in text only (the quick path: JSON segments joined around the filled
strings), and one with a placeholder in a header image's link (the full path: filled, checked
against the message's limits again, encoded). No Redis or network: CPU per recipient only.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shared.models import json_encode
from shared.providers.whatsapp import WhatsAppRequest
from shared.providers.whatsapp_message import decode

BODY = {
    "type": "body",
    "parameters": [
        {"type": "text", "text": "{{first_name}}"},
        {"type": "text", "text": "order {{order|n/a}}"},
    ],
}
HEADER = {
    "type": "header",
    "parameters": [{"type": "image", "image": {"link": "https://shop.example/{{sku}}.png"}}],
}
VALUES = {"first_name": "Ann", "order": "A-1234", "sku": "A1"}


def template(*components: dict[str, Any]) -> dict[str, Any]:
    return {
        "template": {
            "name": "order_update",
            "language": {"code": "en_US"},
            "components": list(components),
        }
    }


def request(message: dict[str, Any], personal: bool) -> WhatsAppRequest:
    return WhatsAppRequest("0-000000000000000000000000", decode(json_encode(message)), personal)


def per_recipient_us(built: WhatsAppRequest, n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        body = built.body(str(447700000000 + i), VALUES)
        assert isinstance(body, bytes)
        built.tagged(body, i)
    return (time.perf_counter() - start) / n * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--recipients", type=int, default=100_000)
    n = parser.parse_args().recipients
    rows = [
        ("template, no placeholders (encoded once)", request(template(BODY), False)),
        ("template, text placeholders (quick path)", request(template(BODY), True)),
        (
            "text body with placeholders (quick path)",
            request({"text": {"body": "Hi {{first_name}}"}}, True),
        ),
        ("template, a link placeholder (full path)", request(template(HEADER, BODY), True)),
    ]
    for name, built in rows:
        print(f"{name:<44} {per_recipient_us(built, n):7.2f} us/recipient")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
