"""API keys: made once, shown once, stored only as a hash; revoked, rotated or expired.

A key's lifecycle is kept on its row (``created_at``, ``rotated_at``, ``revoked_at``,
``expires_at``) and written to the ``pledgewatch.keys`` log; keys are deliberately not
ledger subjects: the ledger is public, and who holds which key is not.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import case, literal, or_, select, update
from sqlalchemy.orm import Session

from app.domain.keys.models import ROLES, ApiKey
from app.errors import Conflict, InvalidInput, NotFound
from app.pagination import decode_cursor, encode_cursor

KEY_PREFIX = "pw_"
log = logging.getLogger("pledgewatch.keys")


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


@dataclass(frozen=True, slots=True)
class Credential:
    """What a stored, unrevoked key grants, and until when (checked at every use)."""

    key_id: int
    principal: Principal
    expires_at: datetime | None

    def valid_at(self, now: datetime) -> bool:
        return self.expires_at is None or now < self.expires_at


@dataclass(frozen=True, slots=True)
class IssuedKey:
    """A key row with its new secret, shown to the caller once and never stored."""

    key: ApiKey
    secret: str
    # The hash the secret replaced (on rotation): caches must forget it.
    replaced_hash: str | None = None


def hash_key(secret: str) -> str:
    # Keys carry 256 bits of randomness, so a fast hash is enough: there is
    # nothing to brute-force that a slow hash would protect.
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


# --- lifetimes -------------------------------------------------------------------------

_UNITS = {"m": timedelta(minutes=1), "h": timedelta(hours=1), "d": timedelta(days=1)}
_UNITS["w"] = timedelta(weeks=1)
_DURATION = re.compile(r"(\d{1,7})([mhdw])")
LONGEST_LIFETIME = timedelta(days=3660)
DURATION_HELP = "a number and a unit: m (minutes), h (hours), d (days) or w (weeks), e.g. 90d"


def parse_lifetime(text: str) -> timedelta:
    """``30m``, ``12h``, ``90d`` or ``8w`` as a duration; ValueError saying why otherwise."""
    match = _DURATION.fullmatch(text.strip().lower())
    if match is None:
        raise ValueError(f"{text!r} is not a duration: write {DURATION_HELP}")
    lifetime = int(match.group(1)) * _UNITS[match.group(2)]
    if lifetime <= timedelta(0):
        raise ValueError("must be longer than zero")
    if lifetime > LONGEST_LIFETIME:
        raise ValueError("must be at most 10 years (3660d)")
    return lifetime


def expiry(
    now: datetime,
    *,
    expires_in: timedelta | None = None,
    expires_at: datetime | None = None,
) -> datetime | None:
    """When a key made ``now`` expires: after ``expires_in``, at ``expires_at``, or never."""
    if expires_in is not None and expires_at is not None:
        raise InvalidInput("expires_at", "give expires_in or expires_at, not both")
    if expires_in is not None:
        return now + expires_in
    if expires_at is not None and expires_at <= now:
        raise InvalidInput("expires_at", "must be in the future")
    if expires_at is not None and expires_at - now > LONGEST_LIFETIME:
        raise InvalidInput("expires_at", "must be at most 10 years (3660 days) from now")
    return expires_at


# --- the lifecycle ---------------------------------------------------------------------


def _new_secret() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def issue_key(
    session: Session, *, name: str, role: str, now: datetime, expires_at: datetime | None = None
) -> IssuedKey:
    """Create a key; its secret is in the answer only, never stored or shown again."""
    if role not in ROLES:
        raise InvalidInput("role", f"must be one of {', '.join(ROLES)}")
    if not name or len(name) > 100 or not name.isprintable():
        raise InvalidInput("name", "must be 1 to 100 printable characters")
    if expires_at is not None and expires_at <= now:
        raise InvalidInput("expires_at", "must be in the future")
    if session.scalar(select(ApiKey.id).where(ApiKey.name == name)) is not None:
        raise Conflict(f"a key named {name!r} already exists")
    secret = _new_secret()
    key = ApiKey(
        name=name, role=role, key_hash=hash_key(secret), created_at=now, expires_at=expires_at
    )
    session.add(key)
    session.flush()
    return IssuedKey(key=key, secret=secret)


def create_key(
    session: Session, *, name: str, role: str, now: datetime, expires_at: datetime | None = None
) -> str:
    """Create a key and return its secret; the secret is never stored or shown again."""
    return issue_key(session, name=name, role=role, now=now, expires_at=expires_at).secret


def get_key(session: Session, name: str) -> ApiKey:
    """The key named ``name``, or a 404."""
    key = session.scalar(select(ApiKey).where(ApiKey.name == name))
    if key is None:
        raise NotFound(f"no key is named {name!r}")
    return key


def list_keys(
    session: Session, *, limit: int | None = None, cursor: str | None = None
) -> tuple[list[ApiKey], str | None]:
    """Keys by name, revoked and expired ones included; a page of ``limit`` when given."""
    after = decode_cursor(cursor, 1)
    query = select(ApiKey).order_by(ApiKey.name)
    if after is not None:
        if not isinstance(after[0], str):
            raise InvalidInput("cursor", "is not a cursor this service gave out")
        query = query.where(ApiKey.name > after[0])
    if limit is None:
        return list(session.scalars(query)), None
    rows = list(session.scalars(query.limit(limit + 1)))
    next_cursor = encode_cursor(rows[limit - 1].name) if len(rows) > limit else None
    return rows[:limit], next_cursor


def revoke_key(
    session: Session, name: str, *, now: datetime, requested_by: str | None = None
) -> ApiKey:
    """Revoke a key for good; revoking it again changes nothing.

    ``requested_by`` is the name of the key asking (through the API): a key may not revoke
    itself, so an API revocation always leaves the admin who made it able to sign in. The
    command line, which needs no key, can revoke any key.
    """
    key = get_key(session, name)
    if requested_by is not None and requested_by == name:
        raise Conflict(
            "a key cannot revoke itself: revoke it with another admin key "
            "or with `pledgewatch keys revoke`"
        )
    if key.revoked_at is None:
        key.revoked_at = now
        session.flush()
    return key


def rotate_key(
    session: Session, name: str, *, now: datetime, expires_at: datetime | None = None
) -> IssuedKey:
    """Give a key a new secret (same name and role); the old secret stops working.

    Without ``expires_at`` an expiring key keeps its lifetime: a 90-day key rotated today
    expires in 90 days. A revoked key stays revoked (409): make a new key instead.
    """
    key = get_key(session, name)
    if key.revoked_at is not None:
        raise Conflict(f"the key {name!r} is revoked; create a new key instead")
    if expires_at is not None and expires_at <= now:
        raise InvalidInput("expires_at", "must be in the future")
    if expires_at is None and key.expires_at is not None:
        expires_at = now + (key.expires_at - (key.rotated_at or key.created_at))
    replaced = key.key_hash
    secret = _new_secret()
    key.key_hash = hash_key(secret)
    key.rotated_at = now
    key.expires_at = expires_at
    session.flush()
    return IssuedKey(key=key, secret=secret, replaced_hash=replaced)


def log_key_event(action: str, key: ApiKey, *, actor: str) -> None:
    """One line in the ``pledgewatch.keys`` log for a creation, rotation or revocation."""
    log.info(
        f"key {action}",
        extra={
            "key_name": key.name,
            "role": key.role,
            "actor": actor,
            "expires_at": key.expires_at.isoformat() if key.expires_at else None,
        },
    )


# --- use -------------------------------------------------------------------------------


def find_credential(session: Session, key_hash: str) -> Credential | None:
    """What the key with ``key_hash`` grants, or None if it is unknown or revoked.

    Expiry is left to the caller, who compares ``expires_at`` with its clock at every use.
    """
    row = session.execute(
        select(ApiKey.id, ApiKey.name, ApiKey.role, ApiKey.expires_at).where(
            ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None)
        )
    ).first()
    if row is None:
        return None
    return Credential(
        key_id=row.id, principal=Principal(name=row.name, role=row.role), expires_at=row.expires_at
    )


def authenticate(session: Session, secret: str, *, now: datetime) -> Principal | None:
    """The principal a presented secret belongs to, or None if unknown, revoked or expired."""
    credential = find_credential(session, hash_key(secret))
    if credential is None or not credential.valid_at(now):
        return None
    return credential.principal


def record_uses(session: Session, uses: Mapping[int, datetime]) -> None:
    """Set each key's ``last_used_at`` in one statement, never moving it back in time.

    Several processes record uses of the same key; the latest wins whatever the order.
    """
    if not uses:
        return
    column_type = ApiKey.__table__.c.last_used_at.type
    latest = case(
        {key_id: literal(at, column_type) for key_id, at in uses.items()}, value=ApiKey.id
    )
    session.execute(
        update(ApiKey)
        .where(ApiKey.id.in_(list(uses)))
        .where(or_(ApiKey.last_used_at.is_(None), ApiKey.last_used_at < latest))
        .values(last_used_at=latest)
        .execution_options(synchronize_session=False)
    )
