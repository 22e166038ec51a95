"""What filling a message per recipient costs the consumer, in microseconds per recipient.

    .venv/bin/python bench/render.py [--recipients 100000]

Three messages through ``MessengerRequest.body`` (the whole Send API body, as a sender builds it):
a text without placeholders (encoded once per job), a personalised text, and a personalised
generic template with buttons and quick replies (filled, checked against Meta's limits again,
encoded). The baseline is the text-only renderer of the release before rich messages: a
template join and one JSON encode. No Redis or network: this is CPU per recipient only.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shared import messages
from shared.models import json_encode
from shared.providers.messenger import MessengerRequest
from shared.template import Template

CARD = {
    "attachment": {
        "type": "template",
        "payload": {
            "template_type": "generic",
            "elements": [
                {
                    "title": "{{first_name}}, your shoes are back",
                    "subtitle": "Size {{size|one size}}",
                    "image_url": "https://shop.example/img/{{sku}}.png",
                    "buttons": [
                        {
                            "type": "web_url",
                            "url": "https://shop.example/b/{{sku}}",
                            "title": "Buy",
                        },
                        {"type": "postback", "title": "Not now", "payload": "SNOOZE_{{sku}}"},
                    ],
                }
            ],
        },
    },
    "quick_replies": [{"content_type": "text", "title": "More", "payload": "MORE_{{sku}}"}],
}
TEXT = "Hi {{first_name}}, from {{city|our shop}}!"
VALUES = {"first_name": "Ann", "city": "Oslo", "size": "38", "sku": "A1"}


def spec(message: dict[str, Any], personal: bool) -> MessengerRequest:
    decoded = messages.decode(json_encode(message))
    return MessengerRequest("0-000000000000000000000000", decoded, "UPDATE", None, personal)


def per_recipient_us(build: Any, n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        build(str(10**15 + i), VALUES)
    return (time.perf_counter() - start) / n * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--recipients", type=int, default=100_000)
    n = parser.parse_args().recipients
    old = Template.parse(TEXT)

    def old_body(psid: str, values: dict[str, str]) -> bytes:
        rest = json_encode({"message": {"text": old.render(values)}, "messaging_type": "UPDATE"})
        return b'{"recipient":{"id":' + json_encode(psid) + b"}," + rest[1:]

    rows = [
        ("text, no placeholders (encoded once)", spec({"text": "Hello"}, False).body),
        ("text, before rich messages (baseline)", old_body),
        ("text, personalised", spec({"text": TEXT}, True).body),
        ("generic template + quick replies, personalised", spec(CARD, True).body),
    ]
    baseline = per_recipient_us(old_body, n)
    for name, build in rows:
        us = per_recipient_us(build, n)
        print(f"{name:<48} {us:6.2f} us/recipient  {us / baseline:5.2f}x baseline")
    return 0


if __name__ == "__main__":
    sys.exit(main())
