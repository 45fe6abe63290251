from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from app.types import RequiredText, Slug, StorableStr, UTCTimestamp

SourceType = Literal[
    "pledger_official", "counterpart_official", "independent", "dataset", "analyst_note"
]
Reliability = Literal["low", "medium", "high"]
Stance = Literal["supports", "undermines", "context"]
ReviewState = Literal["unreviewed", "accepted", "rejected"]

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def _web_url(value: str) -> str:
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises on a port that is not a number in 0..65535
    except ValueError as error:
        raise ValueError(f"is not a URL: {error}") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an absolute http or https URL")
    if any(ch.isspace() for ch in value):
        raise ValueError("must not contain whitespace")
    return value


def _sha256_hex(value: str) -> str:
    lowered = value.lower()
    if not _HEX64.match(lowered):
        raise ValueError("must be 64 hexadecimal characters (a SHA-256)")
    return lowered


WebUrl = Annotated[StorableStr, Field(max_length=2048), AfterValidator(_web_url)]
ContentHash = Annotated[str, AfterValidator(_sha256_hex)]

_EXAMPLE_ITEM: dict[str, Any] = {
    "title": "Biden and Xi hold first call since Woodside summit",
    "url": "https://example.org/2024/04/02/biden-xi-call",
    "summary": "The two leaders spoke by phone on 2 April 2024.",
    "published_at": "2024-04-02T18:00:00Z",
    "source_name": "Example Wire",
    "source_type": "independent",
    "reliability": "high",
}


class EvidenceFields(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: Annotated[RequiredText, Field(max_length=1000)]
    url: WebUrl | None = Field(
        default=None, description="Items with the same normalised URL are one item."
    )
    summary: Annotated[StorableStr, Field(max_length=20_000)] = ""
    published_at: UTCTimestamp = Field(
        description="When it happened or was published (RFC 3339, or a date meaning 00:00 UTC)."
    )
    source_name: Annotated[RequiredText, Field(max_length=200)]
    source_type: SourceType
    reliability: Reliability = "medium"
    content_hash: ContentHash | None = Field(
        default=None,
        description="SHA-256 of the item's content; computed from title, summary and "
        "published_at when left out. Items with the same hash are one item.",
    )
    fetched_at: UTCTimestamp | None = Field(
        default=None, description="When a collector fetched the text the hash was taken of."
    )


class PledgeEvidenceCreate(EvidenceFields):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{**_EXAMPLE_ITEM, "stance": "supports"}]}
    )

    stance: Stance


class LinkIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pledge_id: Slug
    stance: Stance


class EvidenceCreate(EvidenceFields):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    **_EXAMPLE_ITEM,
                    "links": [
                        {"pledge_id": "us-cn-leader-calls-more-often", "stance": "supports"},
                        {"pledge_id": "us-cn-open-lines-of-communication", "stance": "supports"},
                    ],
                }
            ]
        },
    )

    links: Annotated[list[LinkIn], Field(min_length=1, max_length=100)]


MAX_BATCH = 1000


class EvidenceBatch(BaseModel):
    """Items are validated one by one, so one bad item does not spoil the batch."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "items": [
                        {
                            **_EXAMPLE_ITEM,
                            "links": [
                                {"pledge_id": "us-cn-leader-calls-more-often", "stance": "supports"}
                            ],
                        }
                    ]
                }
            ]
        },
    )

    items: Annotated[
        list[Any],
        Field(
            min_length=1,
            max_length=MAX_BATCH,
            description="Each item is an EvidenceCreate. An item that is not a valid one is "
            "answered in its own result with status 422; the others are stored.",
            json_schema_extra={
                "items": {
                    "anyOf": [
                        {"$ref": "#/components/schemas/EvidenceCreate"},
                        {"description": "anything else is answered with a per-item 422"},
                    ]
                }
            },
        ),
    ]


class LinkOut(BaseModel):
    pledge_id: str
    stance: Stance
    review: ReviewState
    review_note: str | None
    reviewed_by: str | None
    reviewed_at: datetime | None
    linked_by: str
    created_at: datetime


class EvidenceOut(BaseModel):
    id: int
    title: str
    url: str | None
    summary: str
    published_at: datetime
    source_name: str
    source_type: SourceType
    reliability: Reliability
    content_hash: str
    collected_by: str
    recorded_at: datetime
    fetched_at: datetime | None
    links: list[LinkOut]


class PledgeEvidenceOut(BaseModel):
    """An evidence item as it bears on one pledge."""

    id: int
    title: str
    url: str | None
    summary: str
    published_at: datetime
    source_name: str
    source_type: SourceType
    reliability: Reliability
    stance: Stance
    review: ReviewState
    recorded_at: datetime


class BatchProblem(BaseModel):
    title: str
    detail: str
    errors: list[dict[str, Any]]


class BatchResult(BaseModel):
    index: int
    status: Literal[200, 201, 422]
    id: int | None = None
    links: list[LinkOut] | None = None
    problem: BatchProblem | None = None


class BatchOut(BaseModel):
    results: list[BatchResult]


class ReviewIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "pledge_id": "us-cn-leader-calls-more-often",
                    "review": "accepted",
                    "note": "Matches the White House readout.",
                }
            ]
        },
    )

    pledge_id: Slug
    review: Literal["accepted", "rejected"]
    note: Annotated[StorableStr, Field(max_length=5000)] | None = None


class QueueItem(BaseModel):
    evidence_id: int
    pledge_id: str
    stance: Stance
    linked_by: str
    created_at: datetime
    title: str
    url: str | None
    published_at: datetime
    source_name: str
    source_type: SourceType
    reliability: Reliability
