from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.types import StorableStr

ProposalState = Literal["open", "confirmed", "dismissed"]
ProposedStatus = Literal["kept", "broken"]


class ProposalOut(BaseModel):
    """A final verdict a rule proposes, and what an analyst made of it."""

    id: int
    pledge_id: str
    rule: str = Field(description="The name of the rule that proposed it.")
    proposed_status: ProposedStatus
    reason: str
    evidence_ids: list[int] = Field(description="The evidence the rule relied on.")
    created_at: datetime
    state: ProposalState
    decided_by: str | None = Field(description="The analyst who confirmed or dismissed it.")
    decided_at: datetime | None
    note: str | None = Field(description="The analyst's note on the decision.")
    status_change_id: int | None = Field(
        description="The status change a confirmation recorded (see the pledge's history)."
    )


class DecisionIn(BaseModel):
    """The optional body of a confirmation or a dismissal."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"note": "The deadline passed with no agreement."}]},
    )

    note: Annotated[StorableStr, Field(max_length=5000)] | None = None
