from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator

from app.domain.evidence.schemas import Reliability, SourceType, Stance, WebUrl
from app.redact import redact_text, redact_url
from app.types import RequiredText, Slug, StorableStr, StrictCount

SourceKind = Literal["rss", "json", "csv"]
# partial: the run ingested as many items as a run may; the next run goes on with the rest.
RunOutcome = Literal["running", "ok", "not_modified", "failed", "partial"]
Phrase = Annotated[RequiredText, Field(max_length=200)]
Phrases = Annotated[list[Phrase], Field(max_length=50)]


class MatchRules(BaseModel):
    """Which items attach: all of ``all``, at least one of ``any`` (if given), none of ``none``.

    Words and phrases, case-insensitive, matched on word boundaries in title and summary.
    """

    model_config = ConfigDict(extra="forbid")

    any: Phrases = Field(default_factory=list)
    all: Phrases = Field(default_factory=list)
    none: Phrases = Field(default_factory=list)


_EXAMPLE: dict[str, Any] = {
    "id": "state-dept-china-releases",
    "name": "US State Department: China press releases",
    "kind": "rss",
    "url": "https://www.state.gov/rss-feed/east-asia-and-the-pacific/feed/",
    "every_minutes": 60,
    "pledges": ["us-cn-open-lines-of-communication"],
    "match": {"any": ["Wang Yi", "PRC"], "none": ["Taiwan Relations Act"]},
    "stance": "supports",
    "source_type": "pledger_official",
    "reliability": "high",
    "trusted": False,
    "enabled": True,
}


class SourceFields(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[RequiredText, Field(max_length=200)]
    kind: SourceKind
    url: WebUrl
    every_minutes: Annotated[StrictCount, Field(ge=1, le=10_080)] = 60
    pledges: Annotated[list[Slug], Field(min_length=1, max_length=200)]
    match: MatchRules = Field(default_factory=MatchRules)
    stance: Stance = "supports"
    source_type: SourceType
    reliability: Reliability = "medium"
    trusted: StrictBool = Field(default=False, description="Its links start accepted.")
    enabled: StrictBool = True
    mapping: dict[str, Any] | None = Field(
        default=None,
        description='json: {"items": "data.items", "title": "headline", "url": "link", '
        '"summary": "body", "published_at": "date"}; csv: {"date": "column", "value": '
        '"column", "target": 100, "direction": "at_least"}.',
    )

    @field_validator("pledges")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("must not list the same pledge twice")
        return value


class SourceCreate(SourceFields):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [_EXAMPLE]})

    id: Slug = Field(description="A slug you choose.")


class SourceUpdate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"enabled": False}, {"every_minutes": 15}]},
    )

    name: Annotated[RequiredText, Field(max_length=200)] | None = None
    url: WebUrl | None = None
    every_minutes: Annotated[StrictCount, Field(ge=1, le=10_080)] | None = None
    pledges: Annotated[list[Slug], Field(min_length=1, max_length=200)] | None = None
    match: MatchRules | None = None
    stance: Stance | None = None
    source_type: SourceType | None = None
    reliability: Reliability | None = None
    trusted: StrictBool | None = None
    enabled: StrictBool | None = None
    mapping: dict[str, Any] | None = None


class SourceOut(BaseModel):
    id: str
    name: str
    kind: SourceKind
    url: str
    every_minutes: int
    pledges: list[str]
    match: MatchRules
    stance: Stance
    source_type: SourceType
    reliability: Reliability
    trusted: bool
    enabled: bool
    mapping: dict[str, Any] | None
    last_run_at: datetime | None
    last_success_at: datetime | None
    consecutive_failures: int
    created_at: datetime
    updated_at: datetime

    def redacted(self) -> SourceOut:
        """This source as anyone but an admin may see it: its URL without secrets."""
        return self.model_copy(update={"url": redact_url(self.url)})


class RunOut(BaseModel):
    id: int
    source_id: str
    started_at: datetime
    finished_at: datetime | None
    outcome: RunOutcome
    http_status: int | None
    items_seen: int
    evidence_added: int
    links_added: int
    error: StorableStr | None
    items_ingested: int = Field(
        description="Items of the feed this run took through ingest (new or already known)."
    )
    items_left: int = Field(
        description="Items not yet ingested, left for the next run (outcome partial)."
    )

    def redacted(self) -> RunOut:
        """This run as anyone but an admin may see it: the URLs in its error without secrets."""
        error = redact_text(self.error) if self.error is not None else None
        return self.model_copy(update={"error": error})
