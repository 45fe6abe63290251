"""Every ORM model, imported in one place so that Alembic and tests see the whole schema."""

from app.db import Base
from app.domain.evidence.models import Evidence, EvidenceLink, SourceTally
from app.domain.idempotency.models import IdempotencyRecord
from app.domain.keys.models import ApiKey
from app.domain.pledges.models import Pledge, PledgeParty, PledgeTopic
from app.domain.status.models import Revision, StatusChange

__all__ = [
    "ApiKey",
    "Base",
    "Evidence",
    "EvidenceLink",
    "IdempotencyRecord",
    "Pledge",
    "PledgeParty",
    "PledgeTopic",
    "Revision",
    "SourceTally",
    "StatusChange",
]
