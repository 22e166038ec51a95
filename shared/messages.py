"""Meta's message object as msgspec Structs, the lane and tag rules, and rendering per recipient.

One module owns what a job may say to a person on Messenger:

- ``Message``: the Send API's ``message`` (text, an attachment, a structured template, or the
  utility lane's ``template``, plus quick replies), with Meta's documented limits, so a bad
  message is refused at submit with the exact path of the field, never sent a million times.
- ``check_lane()``: the rules of messaging_type and tag as Meta states them in 2026 (three tags
  retired, CUSTOMER_FEEDBACK only with its template, HUMAN_AGENT never for a bulk send, the
  UTILITY lane with a template and no tag).
- ``Personalised``: ``{{name}}`` / ``{{name|default}}`` placeholders in every string of the
  message, filled per recipient and checked again against the same limits once filled.

Sources (read 2026; see notes/messenger-2026.md):
  Send API reference   https://developers.facebook.com/docs/messenger-platform/reference/send-api
  quick replies        https://developers.facebook.com/docs/messenger-platform/send-messages/quick-replies
  buttons              https://developers.facebook.com/docs/messenger-platform/send-messages/buttons
  button template      https://developers.facebook.com/documentation/business-messaging/messenger-platform/send-messages/template/button
  generic template     https://developers.facebook.com/docs/messenger-platform/reference/templates/generic
  media template       https://developers.facebook.com/documentation/business-messaging/messenger-platform/send-messages/template/media
  customer feedback    https://developers.facebook.com/docs/messenger-platform/send-messages/templates/customer-feedback-template
  utility messages     https://developers.facebook.com/documentation/business-messaging/messenger-platform/send-messages/utility-messages
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Generic, Literal, TypeVar

import msgspec
from msgspec import Meta

from shared.errors import ApiError
from shared.template import Template

MAX_TEXT = 2000  # Send API: text "must be UTF-8 and less than 2000 characters"
RETIRED_ON = "2026-04-27"
RETIRED_TAGS = frozenset({"ACCOUNT_UPDATE", "CONFIRMED_EVENT_UPDATE", "POST_PURCHASE_UPDATE"})

MessagingType = Literal["RESPONSE", "UPDATE", "MESSAGE_TAG", "UTILITY"]
# The retired tags stay in the type so a job naming one gets `tag_retired`, not "invalid enum".
MessageTag = Literal[
    "CUSTOMER_FEEDBACK",
    "HUMAN_AGENT",
    "ACCOUNT_UPDATE",
    "CONFIRMED_EVENT_UPDATE",
    "POST_PURCHASE_UPDATE",
]

HttpsUrl = Annotated[str, Meta(min_length=9, max_length=2048, pattern=r"^https://\S+$")]
AttachmentId = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[0-9]+$")]
ButtonTitle = Annotated[str, Meta(min_length=1, max_length=20)]
Payload = Annotated[str, Meta(min_length=1, max_length=1000)]
# "+" and the country code, or a placeholder that a recipient's row fills (checked once filled).
Phone = Annotated[str, Meta(max_length=64, pattern=r"^(\+[0-9]{6,15}|.*\{\{.+\}\}.*)$")]
Title80 = Annotated[str, Meta(min_length=1, max_length=80)]
WebviewHeight = Literal["compact", "tall", "full"]


class _Part(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, kw_only=True):
    """Every part of a message: unknown fields refused, absent ones left out of the body."""


# ---- buttons (web_url, postback, phone_number) ----


class WebUrlButton(_Part, tag_field="type", tag="web_url"):
    title: ButtonTitle
    url: HttpsUrl
    webview_height_ratio: WebviewHeight | None = None


class PostbackButton(_Part, tag_field="type", tag="postback"):
    title: ButtonTitle
    payload: Payload


class PhoneNumberButton(_Part, tag_field="type", tag="phone_number"):
    title: ButtonTitle
    payload: Phone


Button = WebUrlButton | PostbackButton | PhoneNumberButton
Buttons = Annotated[list[Button], Meta(min_length=1, max_length=3)]


# ---- quick replies ----


class QuickReply(_Part):
    content_type: Literal["text", "user_phone_number", "user_email"]
    title: ButtonTitle | None = None
    payload: Payload | None = None
    image_url: HttpsUrl | None = None

    def __post_init__(self) -> None:
        if self.content_type == "text" and (self.title is None or self.payload is None):
            raise ValueError("a text quick reply needs a `title` and a `payload`")


# ---- attachments: media by url or attachment_id ----


class MediaPayload(_Part):
    url: HttpsUrl | None = None
    attachment_id: AttachmentId | None = None
    is_reusable: bool | None = None

    def __post_init__(self) -> None:
        if (self.url is None) == (self.attachment_id is None):
            raise ValueError("give exactly one of `url` or `attachment_id`")
        if self.attachment_id is not None and self.is_reusable is not None:
            raise ValueError("`is_reusable` goes with a `url`, not an `attachment_id`")


class ImageAttachment(_Part, tag_field="type", tag="image"):
    payload: MediaPayload


class VideoAttachment(_Part, tag_field="type", tag="video"):
    payload: MediaPayload


class AudioAttachment(_Part, tag_field="type", tag="audio"):
    payload: MediaPayload


class FileAttachment(_Part, tag_field="type", tag="file"):
    payload: MediaPayload


# ---- structured templates (attachment type "template") ----


class ButtonTemplate(_Part, tag_field="template_type", tag="button"):
    text: Annotated[str, Meta(min_length=1, max_length=640)]
    buttons: Buttons


class DefaultAction(_Part):
    type: Literal["web_url"]
    url: HttpsUrl
    webview_height_ratio: WebviewHeight | None = None


class GenericElement(_Part):
    title: Title80
    subtitle: Title80 | None = None
    image_url: HttpsUrl | None = None
    default_action: DefaultAction | None = None
    buttons: Buttons | None = None


class GenericTemplate(_Part, tag_field="template_type", tag="generic"):
    elements: Annotated[list[GenericElement], Meta(min_length=1, max_length=10)]
    image_aspect_ratio: Literal["horizontal", "square"] | None = None
    sharable: bool | None = None


class MediaElement(_Part):
    media_type: Literal["image", "video"]
    url: HttpsUrl | None = None  # a Facebook URL: the media template takes no external URL
    attachment_id: AttachmentId | None = None
    buttons: Annotated[list[Button], Meta(min_length=1, max_length=1)] | None = None

    def __post_init__(self) -> None:
        if (self.url is None) == (self.attachment_id is None):
            raise ValueError("give exactly one of `url` or `attachment_id`")


class MediaTemplate(_Part, tag_field="template_type", tag="media"):
    elements: Annotated[list[MediaElement], Meta(min_length=1, max_length=1)]
    sharable: bool | None = None


class FollowUp(_Part):
    type: Literal["free_form"]
    placeholder: Annotated[str, Meta(min_length=1, max_length=640)] | None = None


class FeedbackQuestion(_Part):
    id: Annotated[str, Meta(min_length=1, max_length=80)]
    type: Literal["csat", "nps", "ces"]
    title: Annotated[str, Meta(min_length=1, max_length=640)] | None = None
    score_label: Annotated[str, Meta(max_length=40)] | None = None
    score_option: Annotated[str, Meta(max_length=40)] | None = None
    follow_up: FollowUp | None = None


class FeedbackScreen(_Part):
    questions: Annotated[list[FeedbackQuestion], Meta(min_length=1)]


class BusinessPrivacy(_Part):
    url: HttpsUrl


class CustomerFeedbackTemplate(_Part, tag_field="template_type", tag="customer_feedback"):
    title: Annotated[str, Meta(min_length=1, max_length=640)]
    button_title: Annotated[str, Meta(min_length=1, max_length=640)]
    feedback_screens: Annotated[list[FeedbackScreen], Meta(min_length=1)]
    business_privacy: BusinessPrivacy
    subtitle: Annotated[str, Meta(max_length=640)] | None = None
    expires_in_days: Annotated[int, Meta(ge=1, le=7)] | None = None


StructuredTemplate = ButtonTemplate | GenericTemplate | MediaTemplate | CustomerFeedbackTemplate


class TemplateAttachment(_Part, tag_field="type", tag="template"):
    payload: StructuredTemplate


Attachment = (
    ImageAttachment | VideoAttachment | AudioAttachment | FileAttachment | TemplateAttachment
)


# ---- the utility lane: message.template (an approved Page template) ----


class TextParameter(_Part, tag_field="type", tag="text"):
    text: Annotated[str, Meta(min_length=1, max_length=1024)]
    # Templates made with parameter_format NAMED match parameters by name, else by position.
    parameter_name: Annotated[str, Meta(pattern=r"^[a-z0-9_]{1,64}$")] | None = None


class PostbackParameter(_Part, tag_field="type", tag="POSTBACK"):
    payload: Payload


class UrlParameter(_Part, tag_field="type", tag="URL"):
    url: Annotated[str, Meta(min_length=1, max_length=2000)]  # the suffix the template's URL takes


Parameter = TextParameter | PostbackParameter | UrlParameter


class TemplateComponent(_Part):
    type: Literal["header", "body", "buttons"]
    parameters: Annotated[list[Parameter], Meta(min_length=1, max_length=100)]


class TemplateLanguage(_Part):
    code: Annotated[str, Meta(pattern=r"^[a-z]{2,3}(_[A-Za-z]{2,4})?$")]


class UtilityTemplate(_Part):
    name: Annotated[str, Meta(pattern=r"^[a-z0-9_]{1,512}$")]
    language: TemplateLanguage
    components: Annotated[list[TemplateComponent], Meta(max_length=10)] | None = None


# ---- the message ----


class Message(_Part, kw_only=False):
    """Meta's ``message``: exactly one of text, attachment, template (the UTILITY lane)."""

    text: Annotated[str, Meta(min_length=1, max_length=MAX_TEXT)] | None = None
    attachment: Attachment | None = None
    template: UtilityTemplate | None = None
    quick_replies: Annotated[list[QuickReply], Meta(min_length=1, max_length=13)] | None = None

    def __post_init__(self) -> None:
        given = [self.text is not None, self.attachment is not None, self.template is not None]
        if sum(given) != 1:
            raise ValueError("give exactly one of `text`, `attachment` or `template`")
        if self.template is not None and self.quick_replies is not None:
            raise ValueError("`quick_replies` go with `text` or an `attachment`")


_message_decoder = msgspec.json.Decoder(Message)
_encode = msgspec.json.Encoder().encode


def kind(message: Message) -> str:
    """A word for what the message is, for the job view: text, image, generic_template, ..."""
    if message.template is not None:
        return "utility_template"
    attachment = message.attachment
    if isinstance(attachment, TemplateAttachment):
        return f"{_tag(attachment.payload)}_template"
    if attachment is not None:
        return _tag(attachment)
    return "text"


def _tag(part: msgspec.Struct) -> str:
    """A tagged part's tag (``type`` or ``template_type``), which is no attribute of it."""
    return str(type(part).__struct_config__.tag)


def is_feedback_template(message: Message) -> bool:
    attachment = message.attachment
    return isinstance(attachment, TemplateAttachment) and isinstance(
        attachment.payload, CustomerFeedbackTemplate
    )


def check_lane(
    messaging_type: str, tag: str | None, message: Message, recipients: int | None
) -> None:
    """Meta's rules for messaging_type and tag, as they are since 2026-04-27. ``recipients``:
    the job's count once known (None while a CSV is still being read). Raises ApiError 422."""
    if tag in RETIRED_TAGS:
        raise ApiError(
            422,
            "tag_retired",
            f"Meta retired the {tag} tag on {RETIRED_ON}: every send with it fails with error"
            " 100. Outside the 24-hour window send transactional updates on the utility lane:"
            ' messaging_type "UTILITY" with an approved message.template',
            "tag",
        )
    if messaging_type == "UTILITY":
        if tag is not None:
            raise ApiError(422, "invalid_field", "a UTILITY job carries no tag", "tag")
        if message.template is None:
            raise ApiError(
                422,
                "invalid_field",
                "messaging_type UTILITY sends an approved template: give message.template"
                " (name, language.code, components)",
                "message.template",
            )
        return
    if message.template is not None:
        raise ApiError(
            422,
            "invalid_field",
            'message.template is a utility template: send it with messaging_type "UTILITY"',
            "messaging_type",
        )
    if messaging_type == "MESSAGE_TAG" and tag is None:
        raise ApiError(422, "invalid_field", "messaging_type MESSAGE_TAG needs a tag", "tag")
    if messaging_type != "MESSAGE_TAG" and tag is not None:
        raise ApiError(
            422, "invalid_field", "a tag is only allowed with messaging_type MESSAGE_TAG", "tag"
        )
    if tag == "CUSTOMER_FEEDBACK" and not is_feedback_template(message):
        raise ApiError(
            422,
            "tag_needs_template",
            "the CUSTOMER_FEEDBACK tag goes only with the Customer Feedback template"
            ' (attachment type "template", template_type "customer_feedback")',
            "message",
        )
    if tag == "HUMAN_AGENT" and recipients is not None and recipients > 1:
        raise ApiError(
            422,
            "tag_not_for_bulk",
            "the HUMAN_AGENT tag is for a person's reply to one conversation, never for an"
            f" automated send to {recipients} recipients",
            "recipients",
        )


# ---- personalisation in every string ----

Tree = dict[str, "Tree"] | list["Tree"] | str | int | float | bool | Template | None


class RenderError(Exception):
    """A recipient's filled message breaks one of Meta's limits: fail that recipient."""

    def __init__(self, code: str, message: str, field: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field  # as ``message.attachment.payload.elements[0].title``


M = TypeVar("M", bound=msgspec.Struct)


class Personalised(Generic[M]):
    """A message with its placeholders parsed once; ``render()`` fills them per recipient.

    Placeholders may sit in any string (text, titles, URLs, payloads, template parameters).
    Limits apply to the message as written at submit and again to each filled message.
    Any message Struct works (Messenger's ``Message``, WhatsApp's): a filled one is checked
    against its own type's limits.
    """

    __slots__ = ("_text", "_tree", "_type", "names", "required", "templates")

    def __init__(self, message: M) -> None:
        self.templates: list[tuple[str, Template]] = []
        self._type: type[M] = type(message)
        self._tree = self._compile(msgspec.to_builtins(message), "message")
        # A Messenger text alone (the common case) skips the tree: one join, one length check.
        only_text = (
            isinstance(message, Message)
            and message.text is not None
            and message.quick_replies is None
        )
        self._text = self.templates[0][1] if only_text and self.templates else None
        self.names = sorted({n for _, t in self.templates for n in t.names})
        self.required = sorted({n for _, t in self.templates for n in t.required})

    def _compile(self, node: Any, path: str) -> Tree:
        if isinstance(node, dict):
            return {k: self._compile(v, f"{path}.{k}") for k, v in node.items()}
        if isinstance(node, list):
            return [self._compile(v, f"{path}[{i}]") for i, v in enumerate(node)]
        if isinstance(node, str):
            try:
                template = Template.parse(node)
            except ValueError as exc:
                raise ApiError(422, "invalid_field", str(exc), path) from None
            if template.personal:
                self.templates.append((path, template))
                return template
        result: Tree = node
        return result

    @property
    def personal(self) -> bool:
        return bool(self.templates)

    def unfillable(self, values: Mapping[str, str]) -> str | None:
        """The first placeholder these values cannot fill (empty and no default), or None."""
        for _, template in self.templates:
            missing = template.unfillable(values)
            if missing is not None:
                return missing
        return None

    def field_using(self, name: str) -> str:
        """The path of the first string that uses placeholder ``name``."""
        return next((p for p, t in self.templates if name in t.names), "message")

    def render(self, values: Mapping[str, str]) -> M:
        """The message filled for one recipient; RenderError if it breaks a limit once filled."""
        filled = _fill(self._tree, values)
        try:
            return msgspec.convert(filled, self._type)
        except msgspec.ValidationError as exc:
            text = str(exc)
            path = text.rpartition(" - at `$")[2].rstrip("`") if " - at `$" in text else ""
            # Messenger's text, WhatsApp's text.body
            code = "text_too_long" if path in (".text", ".text.body") else "invalid_message"
            raise RenderError(code, f"the personalised message: {text}", f"message{path}") from None

    def render_json(self, values: Mapping[str, str]) -> bytes:
        if self._text is not None:
            text = self._text.render(values)
            if 0 < len(text) <= MAX_TEXT:
                return _encode({"text": text})
        return _encode(self.render(values))  # and RenderError naming what is wrong


def _fill(node: Tree, values: Mapping[str, str]) -> Any:
    if isinstance(node, Template):
        return node.render(values)
    if isinstance(node, dict):
        return {k: _fill(v, values) for k, v in node.items()}
    if isinstance(node, list):
        return [_fill(v, values) for v in node]
    return node


def encode(message: Message) -> bytes:
    return _encode(message)


def decode(raw: bytes | str) -> Message:
    """A message as the producer stored it in the job hash."""
    return _message_decoder.decode(raw)
