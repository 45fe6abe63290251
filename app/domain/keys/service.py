"""API keys: made once, shown once, stored only as a hash."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.domain.keys.models import ROLES, ApiKey
from app.errors import Conflict, InvalidInput

KEY_PREFIX = "pw_"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is making a request or a change: a key's name and role, a status rule, or nobody."""

    name: str | None
    role: str | None
    # "key" for API keys; "rule" for the status rules, whose changes are recorded as rule:<name>.
    kind: str = "key"

    @property
    def actor(self) -> str:
        return f"{self.kind}:{self.name}" if self.name else "anonymous"

    def has_role(self, needed: str) -> bool:
        return self.role is not None and ROLES.index(self.role) >= ROLES.index(needed)


ANONYMOUS = Principal(name=None, role=None)


def rule_principal(rule: str) -> Principal:
    """The actor of a status rule's changes: ``rule:<name>``, with no role (it calls no API)."""
    return Principal(name=rule, role=None, kind="rule")


def hash_key(secret: str) -> str:
    # Keys carry 256 bits of randomness, so a fast hash is enough: there is
    # nothing to brute-force that a slow hash would protect.
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def create_key(session: Session, *, name: str, role: str, now: datetime) -> str:
    """Create a key and return its secret; the secret is never stored or shown again."""
    if role not in ROLES:
        raise InvalidInput("role", f"must be one of {', '.join(ROLES)}")
    if not name or len(name) > 100 or not name.isprintable():
        raise InvalidInput("name", "must be 1 to 100 printable characters")
    if session.scalar(select(ApiKey.id).where(ApiKey.name == name)) is not None:
        raise Conflict(f"a key named {name!r} already exists")
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiKey(name=name, role=role, key_hash=hash_key(secret), created_at=now))
    session.flush()
    return secret


def authenticate(session: Session, secret: str) -> Principal | None:
    """The principal a presented secret belongs to, or None if it is unknown or revoked."""
    row = session.execute(
        select(ApiKey.name, ApiKey.role).where(
            ApiKey.key_hash == hash_key(secret), ApiKey.revoked_at.is_(None)
        )
    ).first()
    if row is None:
        return None
    return Principal(name=row.name, role=row.role)
