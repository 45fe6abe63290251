from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.types import (
    PartyCode,
    PlausibleDate,
    RequiredText,
    Slug,
    StorableStr,
    StrictCount,
    Topic,
)

PledgeKind = Literal["commitment", "planned_engagement", "concern"]
StatusName = Literal["not_yet_rated", "in_progress", "stalled", "compromise", "kept", "broken"]
VerificationLevel = Literal["unverified", "claimed", "corroborated", "verified"]

Title = Annotated[RequiredText, Field(max_length=500)]
LongText = Annotated[RequiredText, Field(max_length=20_000)]
Parties = Annotated[list[PartyCode], Field(max_length=20)]
Topics = Annotated[list[Topic], Field(max_length=20)]


class StrictInput(BaseModel):
    """Writes refuse fields they do not know, so a typo is an error, not a silent no-op."""

    model_config = ConfigDict(extra="forbid")


class PledgeSource(StrictInput):
    """Where the pledge is recorded: the document and the sentence it rests on."""

    title: Annotated[RequiredText, Field(max_length=500)]
    url: Annotated[StorableStr, Field(max_length=2048)] | None = None
    publisher: Annotated[StorableStr, Field(max_length=200)] | None = None
    published_on: PlausibleDate | None = None
    quote: Annotated[StorableStr, Field(max_length=5000)] | None = None


class PledgeCreate(StrictInput):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "id": "us-cn-counternarcotics-working-group",
                    "title": "US-China counternarcotics working group meets",
                    "text": "The US and China will hold regular meetings of a "
                    "counternarcotics working group.",
                    "kind": "commitment",
                    "made_by": ["US", "CN"],
                    "made_to": ["US", "CN"],
                    "made_on": "2023-11-15",
                    "venue": "Woodside, California",
                    "topics": ["narcotics"],
                    "verification_criteria": "Published readouts of working-group meetings.",
                    "due_on": "2024-11-15",
                }
            ]
        },
    )

    id: Slug | None = Field(default=None, description="A slug; made from the title when left out.")
    title: Title
    text: LongText
    kind: PledgeKind = "commitment"
    made_by: Annotated[Parties, Field(min_length=1)]
    made_to: Parties = Field(default_factory=list)
    made_on: PlausibleDate
    venue: Annotated[StorableStr, Field(max_length=500)] | None = None
    topics: Topics = Field(default_factory=list)
    source: PledgeSource | None = None
    verification_criteria: LongText
    due_on: PlausibleDate | None = None
    review_every_days: Annotated[StrictCount, Field(ge=1, le=3650)] = 30


class PledgeUpdate(StrictInput):
    """Descriptive fields only: status and the derived fields change through their own routes."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"due_on": "2024-12-31", "topics": ["narcotics"]}]},
    )

    title: Title | None = None
    text: LongText | None = None
    kind: PledgeKind | None = None
    made_by: Annotated[Parties, Field(min_length=1)] | None = None
    made_to: Parties | None = None
    venue: Annotated[StorableStr, Field(max_length=500)] | None = None
    topics: Topics | None = None
    source: PledgeSource | None = None
    verification_criteria: LongText | None = None
    due_on: PlausibleDate | None = None
    review_every_days: Annotated[StrictCount, Field(ge=1, le=3650)] | None = None


class PledgeOut(BaseModel):
    id: str
    title: str
    text: str
    kind: PledgeKind
    made_by: list[str]
    made_to: list[str]
    made_on: date
    venue: str | None
    topics: list[str]
    source: PledgeSource | None
    verification_criteria: str
    due_on: date | None
    review_every_days: int
    status: StatusName
    status_since: datetime
    verification: VerificationLevel
    evidence_count: int = Field(description="Accepted evidence links.")
    unreviewed_evidence_count: int = Field(description="Links waiting for an analyst.")
    last_evidence_at: datetime | None
    overdue: bool
    version: int
    created_at: datetime
    updated_at: datetime
