"""The export document: a header, then every table of state as its columns and rows."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.domain.ledger.schemas import LedgerHead
from app.types import UTCTimestamp

ExportFormat = Literal["json", "csv"]
ExportScope = Literal["complete", "public"]

FORMAT_NAME: Literal["pledgewatch-export"] = "pledgewatch-export"
FORMAT_VERSION = 1

# One row per pledge, as in /status, plus the parties and topics.
CSV_COLUMNS = (
    "id",
    "title",
    "kind",
    "status",
    "status_since",
    "verification",
    "evidence_count",
    "last_evidence_at",
    "overdue",
    "due_on",
    "made_by",
    "made_to",
    "topics",
)


class TableDump(BaseModel):
    """One table: its column names, then each row's values in that order (by primary key)."""

    columns: list[str]
    rows: list[list[Any]] = Field(
        description="Datetimes are RFC 3339 in UTC with microseconds, dates YYYY-MM-DD."
    )


class ExportHeader(BaseModel):
    """Everything in an export but the tables: what it is and what state it holds."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    format: Literal["pledgewatch-export"]
    version: int = Field(description="The version of this document's layout.")
    schema_revision: str = Field(
        alias="schema",
        description="The database schema (Alembic revision) the rows are in; import needs the "
        "same one.",
    )
    exported_at: UTCTimestamp
    scope: ExportScope = Field(
        default="complete",
        description="complete: every table of state, to rebuild this Pledgewatch with "
        "`pledgewatch import` (exported by an admin or the command line); public: only what "
        "every reader may see (exported by anyone else): the admin-only tables (sources, their "
        "runs, webhooks) are left out and listed under `excluded`; the ledger is whole (hashes "
        "only). A public export is not meant for import, and import refuses it.",
    )
    secrets: Literal["included", "withheld"] = Field(
        description="Whether webhook secrets are in the file: included in a complete export; "
        "withheld in a public one (it has no webhooks). An older file may hold webhooks whose "
        "secrets are null: import gives each a new secret."
    )
    excluded: dict[str, str] = Field(
        description="Tables deliberately left out (credentials, operational state) and why."
    )
    ledger: LedgerHead = Field(
        description="The ledger's head in this snapshot: after import, verification must end "
        "at exactly this entry."
    )


class ExportDocument(ExportHeader):
    """A whole export: ``pledgewatch import`` rebuilds a new database from it."""

    tables: dict[str, TableDump] = Field(
        description="Every table of state but those under `excluded`, in foreign-key order; "
        "the ledger and the revision counter included."
    )
