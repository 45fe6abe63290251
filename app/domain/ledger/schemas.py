from __future__ import annotations

from pydantic import BaseModel, Field

from app.types import UTCTimestamp


class LedgerHead(BaseModel):
    """Where the chain ends. Keep it: a later chain that does not pass through it was rewritten."""

    length: int = Field(description="The number of entries: the last entry's seq.")
    head: str = Field(description="The last entry's hash (64 zeros for an empty ledger).")


class LedgerEntryOut(BaseModel):
    seq: int
    at: UTCTimestamp
    kind: str
    subject: str = Field(description='What the entry is about: "<type>:<key>".')
    payload_hash: str = Field(description="sha256 of the canonical JSON of the row as written.")
    prev_hash: str
    hash: str = Field(description="sha256(prev_hash + canonical JSON of the entry).")


class LedgerPage(BaseModel):
    items: list[LedgerEntryOut]
    next_cursor: str | None = Field(
        default=None, description="Pass it as `after` (or `cursor`) for the next page."
    )


class VerifyProblem(BaseModel):
    seq: int | None = Field(
        description="The entry concerned; null for a row with no entry, and for a pledge's "
        "derived state (status, verification, counts, summaries) that its history and "
        "evidence do not make."
    )
    subject: str | None
    reason: str


class VerifyResult(BaseModel):
    ok: bool
    length: int
    head: str
    first_bad_seq: int | None = None
    first_bad_subject: str | None = None
    problems: list[VerifyProblem] = Field(default_factory=list)
