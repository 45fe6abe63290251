from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from app.domain.events.service import EVENT_KINDS
from app.domain.evidence.schemas import WebUrl
from app.domain.webhooks.signing import WHSEC_PREFIX, stored_secret
from app.types import RequiredText, StorableStr

DeliveryState = Literal["pending", "delivered", "failed"]
MIN_SECRET_LENGTH = 16
MAX_SECRET_LENGTH = 128
# The whsec_ form of the longest secret (four UTF-8 bytes a character, in base64): any secret
# shown can be given back.
MAX_SECRET_INPUT = len(WHSEC_PREFIX) + 4 * -(-MAX_SECRET_LENGTH * 4 // 3)


def _event_kind(value: str) -> str:
    if value not in EVENT_KINDS:
        raise ValueError(f"must be one of {', '.join(EVENT_KINDS)}")
    return value


EventKind = Annotated[
    str, AfterValidator(_event_kind), Field(json_schema_extra={"enum": list(EVENT_KINDS)})
]

_EXAMPLE: dict[str, Any] = {
    "url": "https://dashboard.example.org/hooks/pledgewatch",
    "events": ["status.changed", "proposal.created"],
    "description": "The situation room's dashboard",
}


class WebhookCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [_EXAMPLE]})

    url: WebUrl = Field(description="Where to POST each event: http or https, on a public address.")
    events: Annotated[list[EventKind], Field(min_length=1, max_length=len(EVENT_KINDS))] = Field(
        default_factory=lambda: list(EVENT_KINDS),
        description="The events to send (the same as /events); all of them when left out.",
    )
    description: Annotated[StorableStr, Field(max_length=1000)] | None = None
    secret: (
        Annotated[RequiredText, Field(min_length=MIN_SECRET_LENGTH, max_length=MAX_SECRET_INPUT)]
        | None
    ) = Field(
        default=None,
        description=f"The secret that signs each delivery (HMAC-SHA256, keyed with its UTF-8 "
        f"bytes): {MIN_SECRET_LENGTH} to {MAX_SECRET_LENGTH} characters of text, or such text "
        "in `whsec_` form (base64 of its UTF-8); a strong one is made when left out. The answer "
        "shows it, in `whsec_` form, this once.",
    )

    @field_validator("secret")
    @classmethod
    def _stored_form(cls, value: str | None) -> str | None:
        if value is None:
            return None
        whsec = value.startswith(WHSEC_PREFIX)
        text = stored_secret(value) if whsec else value
        held = "hold" if whsec else "be"
        if not MIN_SECRET_LENGTH <= len(text) <= MAX_SECRET_LENGTH:
            raise ValueError(
                f"must {held} {MIN_SECRET_LENGTH} to {MAX_SECRET_LENGTH} characters of text, "
                f"not {len(text)}"
            )
        if "\x00" in text or not text.strip():
            raise ValueError(f"must {held} text, without NUL characters")
        return text

    @field_validator("events")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("must not list the same event twice")
        return value


class WebhookOut(BaseModel):
    id: int
    url: str
    events: list[str]
    description: str | None
    created_at: datetime
    created_by: str


class WebhookCreated(WebhookOut):
    secret: str = Field(
        description="Signs every delivery, shown only in this answer (keep it): `whsec_` and "
        "the base64 of the key. `webhook-signature` is `v1,<base64 HMAC-SHA256 of "
        '"{webhook-id}.{webhook-timestamp}.{body}">` (Standard Webhooks: give this secret to '
        "their verifier as it is), and X-Pledgewatch-Signature `sha256=<hex HMAC-SHA256 of the "
        "raw body>`, both keyed with the decoded bytes (for a secret you gave as text, its "
        "UTF-8)."
    )


class DeliveryOut(BaseModel):
    id: str = Field(
        description="The delivery id, sent as X-Pledgewatch-Delivery and webhook-id (the same "
        "on every attempt)."
    )
    webhook_id: int
    seq: int = Field(description="The ledger seq of the event (its id in /events).")
    event: str
    state: DeliveryState
    attempts: int
    last_status_code: int | None = Field(description="The HTTP status of the last attempt.")
    last_error: str | None = Field(description="Why the last attempt failed, in words.")
    next_attempt_at: datetime | None = Field(
        description="When the next attempt is due (null once delivered or failed)."
    )
    created_at: datetime
    delivered_at: datetime | None
