"""Webhooks: subscriptions to the events of ``/events``, and the record of each delivery.

No HTTP here. Sending is in ``deliver.py``; this module owns the subscriptions.
"""

from __future__ import annotations

import secrets
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.domain.ledger.service import read_head, record
from app.domain.status.revision import claim_revision
from app.domain.webhooks.models import Webhook, WebhookDelivery
from app.domain.webhooks.schemas import DeliveryOut, WebhookCreate, WebhookOut
from app.errors import InvalidInput, NotFound
from app.net import FetchError, Resolver, check_public_url, system_resolver
from app.pagination import cursor_id, decode_cursor, encode_cursor


def check_target(url: str, *, allow_private: bool, resolve: Resolver = system_resolver) -> None:
    """A 422 naming ``url`` unless it resolves to public addresses only (or private are allowed).

    Deliveries check again before every attempt, since DNS answers can change.
    """
    try:
        check_public_url(url, allow_private=allow_private, resolve=resolve)
    except FetchError as error:
        raise InvalidInput("url", f"cannot receive webhooks: {error}") from None


def new_secret() -> str:
    """256 random bits, URL-safe: what a subscription gets when it names no secret."""
    return secrets.token_urlsafe(32)


def create_webhook(
    session: Session,
    data: WebhookCreate,
    *,
    actor: str,
    now: datetime,
    allow_private: bool,
    resolve: Resolver = system_resolver,
) -> Webhook:
    """Subscribe ``data.url`` to ``data.events``; events from now on are delivered to it.

    The target is checked before the revision lock is taken: DNS can be slow, and every
    writer waits for that lock.
    """
    check_target(data.url, allow_private=allow_private, resolve=resolve)
    claim_revision(session)
    webhook = Webhook(
        url=data.url,
        events=list(data.events),
        description=data.description,
        secret=data.secret if data.secret is not None else new_secret(),
        created_at=now,
        created_by=actor,
        # Only events after the subscription: the outbox starts at the current head.
        queued_through=read_head(session).length,
    )
    session.add(webhook)
    session.flush()
    record(session, "webhook.created", [webhook.id], now=now)
    return webhook


def get_webhook(session: Session, webhook_id: int) -> Webhook:
    webhook = session.get(Webhook, webhook_id)
    if webhook is None:
        raise NotFound(f"no webhook with id {webhook_id}")
    return webhook


def delete_webhook(session: Session, webhook_id: int, *, now: datetime) -> None:
    """Unsubscribe: the webhook and its deliveries go, and nothing more is sent to it."""
    claim_revision(session)
    session.delete(get_webhook(session, webhook_id))
    session.flush()
    record(session, "webhook.deleted", [webhook_id], now=now)


def list_webhooks(
    session: Session, *, limit: int, cursor: str | None
) -> tuple[list[WebhookOut], str | None]:
    """Every subscription, oldest first (by id)."""
    after = decode_cursor(cursor, 1)
    query = select(Webhook).order_by(Webhook.id).limit(limit + 1)
    if after is not None:
        query = query.where(Webhook.id > cursor_id(after[0]))
    rows = session.scalars(query).all()
    next_cursor = encode_cursor(rows[limit - 1].id) if len(rows) > limit else None
    return [webhook_out(row) for row in rows[:limit]], next_cursor


def list_deliveries(
    session: Session, webhook_id: int, *, limit: int, cursor: str | None
) -> tuple[list[DeliveryOut], str | None]:
    """A webhook's deliveries, newest event first."""
    get_webhook(session, webhook_id)
    after = decode_cursor(cursor, 1)
    query = select(WebhookDelivery).where(WebhookDelivery.webhook_id == webhook_id)
    if after is not None:
        query = query.where(WebhookDelivery.seq < _cursor_seq(after[0]))
    rows = session.scalars(query.order_by(WebhookDelivery.seq.desc()).limit(limit + 1)).all()
    next_cursor = encode_cursor(rows[limit - 1].seq) if len(rows) > limit else None
    return [delivery_out(row) for row in rows[:limit]], next_cursor


def _cursor_seq(value: object) -> int:
    # seq is a BIGINT; a tampered cursor must be a 422, never a database error.
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**63:
        raise InvalidInput("cursor", "is not a cursor this service gave out")
    return value


def webhook_out(webhook: Webhook) -> WebhookOut:
    return WebhookOut(
        id=webhook.id,
        url=webhook.url,
        events=list(webhook.events),
        description=webhook.description,
        created_at=webhook.created_at,
        created_by=webhook.created_by,
    )


def delivery_out(delivery: WebhookDelivery) -> DeliveryOut:
    return DeliveryOut(
        id=delivery.id,
        webhook_id=delivery.webhook_id,
        seq=delivery.seq,
        event=delivery.event,
        state=delivery.state,  # type: ignore[arg-type]
        attempts=delivery.attempts,
        last_status_code=delivery.last_status_code,
        last_error=delivery.last_error,
        next_attempt_at=delivery.next_attempt_at,
        created_at=delivery.created_at,
        delivered_at=delivery.delivered_at,
    )
