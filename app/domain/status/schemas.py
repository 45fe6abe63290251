from __future__ import annotations

from datetime import date, datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictBool

from app.domain.ledger.schemas import LedgerHead
from app.domain.pledges.schemas import PledgeKind, StatusName, VerificationLevel
from app.types import RequiredText, StrictCount, UTCTimestamp


class StatusChangeIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "status": "in_progress",
                    "reason": "First leaders' call since Woodside took place on 2 April 2024.",
                    "evidence_ids": [1],
                    "effective_at": "2024-04-02T18:00:00Z",
                }
            ]
        },
    )

    status: StatusName
    reason: Annotated[RequiredText, Field(max_length=5000)]
    evidence_ids: Annotated[
        list[Annotated[StrictCount, Field(ge=1, le=2_147_483_647)]], Field(max_length=100)
    ] = Field(default_factory=list)
    effective_at: UTCTimestamp | None = Field(
        default=None,
        description="When the change took effect; now when left out. Never before made_on, "
        "never in the future.",
    )
    reopen: StrictBool = Field(default=False, description="Required to leave kept or broken.")


class StatusChangeOut(BaseModel):
    id: int
    pledge_id: str
    from_status: StatusName | None
    to_status: StatusName
    effective_at: datetime
    recorded_at: datetime
    actor: str
    reason: str
    evidence_ids: list[int]


class StatusRow(BaseModel):
    id: str
    title: str
    kind: PledgeKind
    status: StatusName
    status_since: datetime
    verification: VerificationLevel
    evidence_count: int
    last_evidence_at: datetime | None
    overdue: bool
    due_on: date | None


class StatusView(BaseModel):
    generated_at: datetime
    as_of: datetime
    known_at: datetime
    revision: int = Field(description="Grows with every change; the ETag is made from it.")
    ledger: LedgerHead = Field(
        description="The ledger's head when this answer was made: keep it to check later that "
        "the history you saw was not rewritten (GET /api/v1/ledger/verify)."
    )
    counts: dict[StatusName, int]
    pledges: list[StatusRow]


class StatusQuery(BaseModel):
    """The query of ``/status``: what to show, and as of when."""

    model_config = ConfigDict(frozen=True)

    status: StatusName | None = None
    kind: PledgeKind | None = None
    topic: str | None = None
    party: str | None = None
    q: str | None = None
    as_of: UTCTimestamp | None = None
    known_at: UTCTimestamp | None = None
