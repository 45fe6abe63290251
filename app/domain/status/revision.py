"""The global revision: the one counter behind every pledge version and the /status ETag."""

from __future__ import annotations

from typing import Any

from sqlalchemy import event, select, update
from sqlalchemy.orm import Session, SessionTransaction

from app.domain.status.models import Revision

_KEY = "pledgewatch.revision"


@event.listens_for(Session, "after_transaction_end")
def _forget_claim(session: Session, transaction: SessionTransaction, *_: Any) -> None:
    # A claim is only good inside the transaction that holds the lock: once it ends, the
    # next transaction of the same session must lock and claim afresh.
    if transaction.parent is None:
        session.info.pop(_KEY, None)


def claim_revision(session: Session) -> int:
    """Lock the counter for this transaction and return the value the next write will carry.

    Every writer takes this lock first, so concurrent writers queue in one order
    and can never deadlock on each other's rows. Claiming twice in one
    transaction returns the same value.
    """
    claimed = session.info.get(_KEY)
    if claimed is not None:
        return int(claimed)
    current = session.execute(
        select(Revision.value).where(Revision.id == 1).with_for_update()
    ).scalar_one()
    claimed = current + 1
    session.info[_KEY] = claimed
    return claimed


def publish_revision(session: Session) -> int:
    """Make the claimed revision current: readers' ETags change when this commits."""
    value = claim_revision(session)
    session.execute(update(Revision).where(Revision.id == 1).values(value=value))
    return value


def current_revision(session: Session) -> int:
    return int(session.execute(select(Revision.value).where(Revision.id == 1)).scalar_one())


def current_revision_and_head(session: Session) -> tuple[int, int, str]:
    """The revision and the ledger's length and head hash, in one primary-key read."""
    row = session.execute(
        select(Revision.value, Revision.ledger_length, Revision.ledger_head).where(Revision.id == 1)
    ).one()
    return int(row.value), int(row.ledger_length), str(row.ledger_head)
