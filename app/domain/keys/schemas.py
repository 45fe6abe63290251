from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any, Literal, cast

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema

from app.domain.keys.models import ApiKey
from app.domain.keys.service import DURATION_HELP, parse_lifetime
from app.types import UTCTimestamp

Role = Literal["viewer", "collector", "analyst", "admin"]
KeyState = Literal["active", "expired", "revoked"]


def _lifetime(value: Any) -> timedelta:
    if not isinstance(value, str) or len(value) > 20:
        raise ValueError(f"must be {DURATION_HELP}")
    return parse_lifetime(value)


Lifetime = Annotated[
    timedelta,
    BeforeValidator(_lifetime),
    WithJsonSchema(
        {
            "type": "string",
            "maxLength": 20,
            "description": f"How long the key lives from now: {DURATION_HELP}.",
            "examples": ["90d"],
        }
    ),
]

_EXPIRES_AT = "When the key stops working (RFC 3339); in the future, at most 10 years away."


class KeyExpiry(BaseModel):
    """Optional expiry: ``expires_in`` (``90d``) or ``expires_at``, not both."""

    model_config = ConfigDict(extra="forbid")

    expires_in: Lifetime | None = None
    expires_at: UTCTimestamp | None = Field(default=None, description=_EXPIRES_AT)


class KeyCreate(KeyExpiry):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"name": "ci-collector", "role": "collector"}]},
    )

    name: str = Field(
        min_length=1,
        max_length=100,
        description="Unique; the key's changes are recorded as key:<name>.",
    )
    role: Role


class KeyRotate(KeyExpiry):
    """The new secret's expiry; left out, an expiring key keeps its lifetime."""


class KeyOut(BaseModel):
    name: str
    role: Role
    state: KeyState = Field(description="active, expired (expires_at has passed) or revoked.")
    created_at: datetime
    expires_at: datetime | None
    rotated_at: datetime | None = Field(description="When the secret was last replaced.")
    revoked_at: datetime | None
    last_used_at: datetime | None = Field(
        description="When the key was last accepted, recorded up to about a minute late."
    )


class KeyIssued(KeyOut):
    secret: str = Field(
        description="The key, for 'Authorization: Bearer <secret>'. Shown in this answer only: "
        "only its hash is stored."
    )


def key_out(key: ApiKey, *, now: datetime) -> KeyOut:
    """A key as admins see it: never its secret or hash."""
    state: KeyState = "active"
    if key.revoked_at is not None:
        state = "revoked"
    elif key.expires_at is not None and key.expires_at <= now:
        state = "expired"
    return KeyOut(
        name=key.name,
        role=cast(Role, key.role),
        state=state,
        created_at=key.created_at,
        expires_at=key.expires_at,
        rotated_at=key.rotated_at,
        revoked_at=key.revoked_at,
        last_used_at=key.last_used_at,
    )
