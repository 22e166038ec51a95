"""WhatsApp's message as msgspec Structs: what a WhatsApp job may say to a person.

``WhatsAppMessage`` is the job's ``message`` when its channel is ``whatsapp``: exactly one of

- ``text``: ``{"body": str (1..4096), "preview_url": bool = false}``: free-form, delivered only
  inside the person's 24-hour customer service window (else Meta answers 131047);
- ``template``: ``{"name", "language": {"code"}, "components": [...]}``: an approved template,
  the only message WhatsApp delivers outside the window.

The shapes mirror the ``text`` and ``template`` objects of Meta's send body, so the provider
(shared/providers/whatsapp.py) puts them in the request as they are, next to
``messaging_product``, ``to`` and ``type``. Unknown fields are refused at submit with the field's
path, as for Messenger. ``{{column}}`` placeholders may sit in any string; they are filled per
recipient by ``shared.messages.Personalised`` (generic over the message Struct), and the filled
message is checked against these same limits.

Sources (read 2026):
  messages reference   https://developers.facebook.com/docs/whatsapp/cloud-api/reference/messages
  text messages        https://developers.facebook.com/docs/whatsapp/cloud-api/messages/text-messages
  template messages    https://developers.facebook.com/docs/whatsapp/cloud-api/guides/send-message-templates
  template names       https://developers.facebook.com/docs/whatsapp/business-management-api/message-templates
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

MAX_BODY = 4096  # text.body: "Maximum 4096 characters"
MAX_PARAMETER = 32_768  # a body parameter's text; Meta refuses longer ones (132000 family)

# https with no spaces, or a placeholder a recipient's row fills (checked again once filled).
Link = Annotated[str, Meta(min_length=9, max_length=2048, pattern=r"^(https?://\S+|.*\{\{.+\}\})$")]
MediaId = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[0-9]+$")]
# Meta's template names: lowercase letters, digits and underscores, up to 512 characters.
TemplateName = Annotated[str, Meta(pattern=r"^[a-z0-9_]{1,512}$")]
# en, en_US, pt_BR, zh_HK, es_419 (Meta's supported languages list)
LanguageCode = Annotated[str, Meta(pattern=r"^[a-z]{2,3}(_[A-Za-z0-9]{2,4})?$")]


class _Part(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, kw_only=True):
    """Every part: unknown fields refused, absent ones left out of the send body."""


class Text(_Part):
    body: Annotated[str, Meta(min_length=1, max_length=MAX_BODY)]
    preview_url: bool = False


# ---- template parameters (one per {{n}} or named variable of the approved template) ----


class MediaObject(_Part):
    """A header's media: by ``link`` (public https URL) or by uploaded media ``id``."""

    link: Link | None = None
    id: MediaId | None = None
    filename: Annotated[str, Meta(min_length=1, max_length=240)] | None = None  # documents

    def __post_init__(self) -> None:
        if (self.link is None) == (self.id is None):
            raise ValueError("give exactly one of `link` or `id`")


class Currency(_Part):
    fallback_value: Annotated[str, Meta(min_length=1, max_length=256)]
    code: Annotated[str, Meta(pattern=r"^[A-Z]{3}$")]  # ISO 4217
    amount_1000: int


class DateTime(_Part):
    fallback_value: Annotated[str, Meta(min_length=1, max_length=256)]


class TextParameter(_Part, tag_field="type", tag="text"):
    text: Annotated[str, Meta(min_length=1, max_length=MAX_PARAMETER)]
    # Templates made with parameter_format NAMED match parameters by name, else by position.
    parameter_name: Annotated[str, Meta(pattern=r"^[a-z0-9_]{1,64}$")] | None = None


class CurrencyParameter(_Part, tag_field="type", tag="currency"):
    currency: Currency
    parameter_name: Annotated[str, Meta(pattern=r"^[a-z0-9_]{1,64}$")] | None = None


class DateTimeParameter(_Part, tag_field="type", tag="date_time"):
    date_time: DateTime
    parameter_name: Annotated[str, Meta(pattern=r"^[a-z0-9_]{1,64}$")] | None = None


class ImageParameter(_Part, tag_field="type", tag="image"):
    image: MediaObject


class VideoParameter(_Part, tag_field="type", tag="video"):
    video: MediaObject


class DocumentParameter(_Part, tag_field="type", tag="document"):
    document: MediaObject


class PayloadParameter(_Part, tag_field="type", tag="payload"):
    """A quick-reply button's payload, returned in the person's reply webhook."""

    payload: Annotated[str, Meta(min_length=1, max_length=256)]


Parameter = (
    TextParameter
    | CurrencyParameter
    | DateTimeParameter
    | ImageParameter
    | VideoParameter
    | DocumentParameter
    | PayloadParameter
)

ButtonSubType = Literal["quick_reply", "url", "copy_code", "flow", "catalog", "voice_call"]


class Component(_Part):
    """The values for one part of the template: its header, body, or button ``index``."""

    type: Literal["header", "body", "button"]
    sub_type: ButtonSubType | None = None
    index: Annotated[str, Meta(pattern=r"^[0-9]$")] | None = None  # "0".."9", buttons only
    parameters: Annotated[list[Parameter], Meta(max_length=100)] = []

    def __post_init__(self) -> None:
        if self.type == "button" and (self.sub_type is None or self.index is None):
            raise ValueError("a button component needs `sub_type` and `index`")
        if self.type != "button" and (self.sub_type is not None or self.index is not None):
            raise ValueError("`sub_type` and `index` go with a button component")


class Language(_Part):
    code: LanguageCode
    policy: Literal["deterministic"] | None = None


class Template(_Part):
    name: TemplateName
    language: Language
    components: Annotated[list[Component], Meta(max_length=10)] | None = None


class WhatsAppMessage(_Part, kw_only=False):
    """A WhatsApp job's ``message``: exactly one of ``text`` or ``template``."""

    text: Text | None = None
    template: Template | None = None

    def __post_init__(self) -> None:
        if (self.text is None) == (self.template is None):
            raise ValueError("give exactly one of `text` or `template`")

    @property
    def type(self) -> Literal["text", "template"]:
        """The send body's ``type``."""
        return "text" if self.text is not None else "template"


_decoder = msgspec.json.Decoder(WhatsAppMessage)
_encode = msgspec.json.Encoder().encode


def kind(message: WhatsAppMessage) -> str:
    """A word for the job view: ``whatsapp_text`` or ``whatsapp_template``."""
    return f"whatsapp_{message.type}"


def encode(message: WhatsAppMessage) -> bytes:
    return _encode(message)


def decode(raw: bytes | str) -> WhatsAppMessage:
    """A message as the producer stored it in the job hash."""
    return _decoder.decode(raw)
