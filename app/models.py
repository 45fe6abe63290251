"""Every ORM model, imported in one place so that Alembic and tests see the whole schema."""

from app.db import Base
from app.domain.evidence.models import (
    Evidence,
    EvidenceLink,
    EvidenceMonth,
    GradeDates,
    SourceTally,
)
from app.domain.idempotency.models import IdempotencyRecord
from app.domain.keys.models import ApiKey
from app.domain.ledger.models import LedgerEntry
from app.domain.pledges.models import Pledge, PledgeParty, PledgeTopic
from app.domain.proposals.models import Proposal
from app.domain.sources.models import Source, SourceRun
from app.domain.status.models import Revision, StatusChange
from app.domain.webhooks.models import Webhook, WebhookDelivery
from app.scheduler.models import JobRun, SchedulerLease, apscheduler_jobs

__all__ = [
    "ApiKey",
    "Base",
    "Evidence",
    "EvidenceLink",
    "EvidenceMonth",
    "GradeDates",
    "IdempotencyRecord",
    "JobRun",
    "LedgerEntry",
    "Pledge",
    "PledgeParty",
    "PledgeTopic",
    "Proposal",
    "Revision",
    "SchedulerLease",
    "Source",
    "SourceRun",
    "SourceTally",
    "StatusChange",
    "Webhook",
    "WebhookDelivery",
    "apscheduler_jobs",
]
