"""HTTP for webhooks and their deliveries (admin only). Rules live in the service."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response

from app.deps import Admin, ClockDep, SessionDep, SettingsDep
from app.domain.pledges.router import Cursor, Limit
from app.domain.webhooks import service
from app.domain.webhooks.schemas import DeliveryOut, WebhookCreate, WebhookCreated, WebhookOut
from app.domain.webhooks.signing import shown_secret
from app.pagination import Page
from app.problems import READ_ERRORS, WRITE_ERRORS, problems
from app.redact import NO_STORE_HEADERS

router = APIRouter(tags=["webhooks"])

WebhookId = Annotated[int, Path(ge=1, le=2_147_483_647, description="The webhook's id.")]


@router.get("/webhooks", response_model=Page[WebhookOut], responses=problems(*READ_ERRORS))
def list_webhooks(
    session: SessionDep, _: Admin, limit: Limit = 50, cursor: Cursor = None
) -> Page[WebhookOut]:
    """Every subscription, oldest first. Secrets are never shown again after creation."""
    items, next_cursor = service.list_webhooks(session, limit=limit, cursor=cursor)
    return Page[WebhookOut](items=items, next_cursor=next_cursor)


@router.post(
    "/webhooks",
    status_code=201,
    response_model=WebhookCreated,
    responses=problems(*WRITE_ERRORS),
)
def create_webhook(
    body: WebhookCreate,
    session: SessionDep,
    clock: ClockDep,
    settings: SettingsDep,
    principal: Admin,
    response: Response,
) -> WebhookCreated:
    """Subscribe a URL to events (all of them unless ``events`` says which). Events recorded
    from now on are POSTed to it, signed with the secret the Standard Webhooks way
    (``webhook-id``: the delivery id, the same on every attempt; ``webhook-timestamp``: unix
    seconds of the attempt; ``webhook-signature: v1,<base64 HMAC-SHA256 of
    "{id}.{timestamp}.{body}">``) and the original way (``X-Pledgewatch-Signature:
    sha256=<hex HMAC-SHA256 of the raw body>``), with ``X-Pledgewatch-Event``,
    ``X-Pledgewatch-Delivery`` (the delivery id: deduplicate on it, a delivery may come twice
    if an attempt was cut short) and ``X-Pledgewatch-Timestamp``. Any answer but 2xx (a
    redirect included) or none within the timeout is retried with exponential backoff.
    The secret is in this answer only, in ``whsec_`` form (the answer must not be cached:
    ``Cache-Control: no-store``). A URL on a private, loopback or link-local address is
    a 422."""
    webhook = service.create_webhook(
        session,
        body,
        actor=principal.actor,
        now=clock.now(),
        allow_private=settings.allow_private_source_hosts,
    )
    response.headers["Location"] = f"/api/v1/webhooks/{webhook.id}"
    response.headers.update(NO_STORE_HEADERS)
    return WebhookCreated(
        **service.webhook_out(webhook).model_dump(), secret=shown_secret(webhook.secret)
    )


@router.get(
    "/webhooks/{webhook_id}", response_model=WebhookOut, responses=problems(*READ_ERRORS, 404)
)
def get_webhook(webhook_id: WebhookId, session: SessionDep, _: Admin) -> WebhookOut:
    """One subscription (without its secret)."""
    return service.webhook_out(service.get_webhook(session, webhook_id))


@router.delete("/webhooks/{webhook_id}", status_code=204, responses=problems(*WRITE_ERRORS, 404))
def delete_webhook(
    webhook_id: WebhookId, session: SessionDep, clock: ClockDep, _: Admin
) -> Response:
    """Unsubscribe. Its deliveries go with it, pending ones included: nothing more is sent."""
    service.delete_webhook(session, webhook_id, now=clock.now())
    return Response(status_code=204)


@router.get(
    "/webhooks/{webhook_id}/deliveries",
    response_model=Page[DeliveryOut],
    responses=problems(*READ_ERRORS, 404),
)
def list_deliveries(
    webhook_id: WebhookId,
    session: SessionDep,
    _: Admin,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Page[DeliveryOut]:
    """The deliveries of a webhook, newest event first: state (``pending``, ``delivered``,
    ``failed``), attempts, the last status code and error, and when the next attempt is due."""
    items, next_cursor = service.list_deliveries(session, webhook_id, limit=limit, cursor=cursor)
    return Page[DeliveryOut](items=items, next_cursor=next_cursor)
