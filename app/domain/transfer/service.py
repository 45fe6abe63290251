"""Export and import: the whole state as one JSON document, and a CSV of the pledges.

The JSON export is generic over the schema: every table of state, in foreign-key
order, each as its column names and its rows in primary-key order, written a
chunk at a time from one consistent snapshot (so the server never holds the
database in memory, and a write made meanwhile is either wholly in or wholly
out). Values are the ledger's canonical plain JSON: datetimes RFC 3339 in UTC
with microseconds, dates ISO. Credentials and operational tables are left out
(``EXCLUDED_TABLES``, also listed in each document).

An export is ``complete`` (admins, the command line: webhook secrets included)
or ``public`` (any other reader): a public export also leaves out the tables
only admins may read (``ADMIN_ONLY_TABLES``: feed URLs and run errors may carry
credentials, webhooks are subscriptions with secrets), so it holds exactly the
state every reader can see. It keeps the whole ledger (hashes only, public at
``/ledger`` anyway), but cannot rebuild the state: import refuses it.

Import loads such a document into a new, migrated, empty database in one
transaction, then verifies the ledger over what it wrote: the export's ledger
head must come out exactly, so a file changed after export is refused, naming
the row. No HTTP here.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, Protocol

from pydantic import ValidationError
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Date,
    Float,
    Integer,
    String,
    Table,
    func,
    insert,
    inspect,
    literal,
    select,
    text,
    update,
)
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from sqlalchemy.types import TypeEngine

from app.db import Database, UTCDateTime
from app.domain.ledger.canonical import plain
from app.domain.ledger.schemas import LedgerHead
from app.domain.ledger.service import Head, read_head, verify
from app.domain.ledger.subjects import SUBJECT_TYPES
from app.domain.pledges.models import PledgeParty, PledgeTopic
from app.domain.status.revision import claim_revision
from app.domain.status.schemas import StatusQuery
from app.domain.status.service import dashboard
from app.domain.transfer.schemas import (
    CSV_COLUMNS,
    FORMAT_NAME,
    FORMAT_VERSION,
    ExportHeader,
    ExportScope,
)
from app.domain.webhooks.service import new_secret
from app.errors import Conflict, InvalidInput, field_path
from app.migrate import head_revision
from app.models import Base

# Left out of every export, with the reason written into the document.
EXCLUDED_TABLES: dict[str, str] = {
    "api_key": "credentials: create keys on the new database with `pledgewatch keys create`",
    "idempotency_record": "operational: replays of recent POSTs, kept only 24 hours",
    "scheduler_lease": "operational: the scheduler's leader lock",
    "job_run": "operational: which scheduler ticks have run",
    "apscheduler_jobs": "operational: rebuilt from the sources when the scheduler starts",
    "webhook_delivery": "operational: delivery attempts; events up to each webhook's "
    "queued_through are not sent again, and deliveries still pending are not carried over",
}
# Tables of state only admins may read, left out of a public export (by any other reader).
ADMIN_ONLY_TABLES: dict[str, str] = {
    "source": "admin only: feed URLs may hold credentials (user:password@, tokens in the query)",
    "source_run": "admin only: a run's error repeats its feed's URL",
    "webhook": "admin only: subscribers' URLs and signing secrets",
}
# Credentials inside tables of state. Exports older than public ones could leave them out
# (null), and import then makes new ones.
SECRET_COLUMNS: dict[str, frozenset[str]] = {"webhook": frozenset({"secret"})}
# Rows the migrations create (the one revision counter): import updates them by key.
_PRESEEDED = frozenset({"revision"})
CHUNK_ROWS = 1000
_LIST_SEPARATOR = " "
# A spreadsheet runs a cell that starts with one of these as a formula (full-width forms too).
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "\uff1d", "\uff0b", "\uff0d", "\uff20")


class Progress(Protocol):
    """Told how far a long export or import has got (the command line draws a bar)."""

    def start(self, description: str, total: int) -> None: ...

    def update(self, completed: int) -> None: ...


def exported_tables(scope: ExportScope = "complete") -> list[Table]:
    """Every table of state (only the public ones for a ``public`` export), parents first."""
    left_out = excluded_tables(scope)
    return [table for table in Base.metadata.sorted_tables if table.name not in left_out]


def excluded_tables(scope: ExportScope) -> dict[str, str]:
    """The tables an export of ``scope`` leaves out, and why (written into the document)."""
    return EXCLUDED_TABLES if scope == "complete" else EXCLUDED_TABLES | ADMIN_ONLY_TABLES


@contextmanager
def snapshot(database: Database) -> Iterator[Session]:
    """A read session that sees one consistent state however long it is used.

    SQLite's read transaction is a snapshot already; PostgreSQL needs REPEATABLE
    READ, or rows committed halfway through an export would be half in it.
    """
    with database.session(write=False) as session:
        if database.dialect == "postgresql":
            session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        try:
            yield session
        finally:
            session.rollback()


# --- export ------------------------------------------------------------------------------------


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def export_chunks(
    session: Session,
    *,
    now: datetime,
    scope: ExportScope,
    progress: Progress | None = None,
    chunk_rows: int = CHUNK_ROWS,
) -> Iterator[bytes]:
    """The JSON export of what ``session`` sees, as UTF-8 pieces; one row per line.

    Give it a ``snapshot`` session. ``complete``: every table of state, webhook
    secrets included (for admins and operators only); ``public``: only what
    every reader may see (see the module's docstring).
    """
    tables = exported_tables(scope)
    head = read_head(session)
    if progress is not None:
        total = sum(
            session.execute(select(func.count()).select_from(table)).scalar_one()
            for table in tables
        )
        progress.start("exporting", total)
    header = ExportHeader(
        format=FORMAT_NAME,
        version=FORMAT_VERSION,
        schema_revision=head_revision(),
        exported_at=now,
        scope=scope,
        secrets="included" if scope == "complete" else "withheld",
        excluded=excluded_tables(scope),
        ledger=LedgerHead(length=head.length, head=head.hash),
    )
    opening = header.model_dump_json(by_alias=True)
    yield (opening[:-1] + ',"tables":{').encode()
    done = 0
    for position, table in enumerate(tables):
        names = [column.name for column in table.columns]
        start = "," if position else ""
        yield f'{start}\n{_dumps(table.name)}:{{"columns":{_dumps(names)},"rows":['.encode()
        result = session.execute(
            select(table).order_by(*table.primary_key.columns),
            execution_options={"yield_per": chunk_rows},
        )
        written = 0
        for partition in result.partitions():
            lines = [_dumps([plain(value) for value in row]) for row in partition]
            yield (("," if written else "") + "\n" + ",\n".join(lines)).encode()
            written += len(lines)
            done += len(lines)
            if progress is not None:
                progress.update(done)
        yield b"]}"
    yield b"\n}}\n"


def stream_export(
    database: Database,
    *,
    now: datetime,
    scope: ExportScope,
    progress: Progress | None = None,
) -> Iterator[bytes]:
    """``export_chunks`` over a snapshot it opens on first use and closes when done."""
    with snapshot(database) as session:
        yield from export_chunks(session, now=now, scope=scope, progress=progress)


def spreadsheet_safe(cell: str) -> str:
    """``cell``, with a leading apostrophe if a spreadsheet would otherwise run it as a formula."""
    return "'" + cell if cell.startswith(_FORMULA_STARTS) else cell


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        value = _LIST_SEPARATOR.join(value)
    return spreadsheet_safe(str(value))


def _pledge_lists(session: Session) -> dict[str, dict[str, list[str]]]:
    lists: dict[str, dict[str, list[str]]] = {}

    def of(pledge_id: str) -> dict[str, list[str]]:
        return lists.setdefault(pledge_id, {"made_by": [], "made_to": [], "topics": []})

    for party in session.execute(
        select(PledgeParty.pledge_id, PledgeParty.role, PledgeParty.party).order_by(
            PledgeParty.pledge_id, PledgeParty.role, PledgeParty.position
        )
    ):
        of(party.pledge_id)[party.role].append(party.party)
    for topic in session.execute(
        select(PledgeTopic.pledge_id, PledgeTopic.topic).order_by(
            PledgeTopic.pledge_id, PledgeTopic.position
        )
    ):
        of(topic.pledge_id)["topics"].append(topic.topic)
    return lists


def export_csv(session: Session, *, now: datetime) -> str:
    """One row per pledge, as ``/status`` shows it now, with its parties and topics.

    Lists are separated by spaces. Cells a spreadsheet would run as formulas get a
    leading apostrophe (see ``spreadsheet_safe``). Lines end in CRLF (RFC 4180).
    """
    view = dashboard(session, StatusQuery(), now=now)
    lists = _pledge_lists(session)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for row in view.pledges:
        values = {**row.model_dump(mode="json"), **lists.get(row.id, {})}
        writer.writerow([_csv_cell(values.get(column)) for column in CSV_COLUMNS])
    return buffer.getvalue()


# --- import ------------------------------------------------------------------------------------


@dataclass(slots=True)
class ImportReport:
    """What an import wrote: rows per table, the verified ledger head, and what to know."""

    rows: dict[str, int]
    ledger: Head
    warnings: list[str] = field(default_factory=list)


def read_header(document: Any) -> ExportHeader:
    """The document's header, or InvalidInput naming what is wrong with it."""
    if not isinstance(document, Mapping):
        raise InvalidInput("document", "must be a JSON object: a Pledgewatch export")
    if document.get("format") != FORMAT_NAME:
        raise InvalidInput("format", f"must be {FORMAT_NAME!r}: this is not a Pledgewatch export")
    version = document.get("version")
    if version != FORMAT_VERSION:
        raise InvalidInput(
            "version",
            f"the file is export version {_shown(version)}; this Pledgewatch reads version "
            f"{FORMAT_VERSION}",
        )
    try:
        header = ExportHeader.model_validate(
            {key: value for key, value in document.items() if key != "tables"}
        )
    except ValidationError as error:
        first = error.errors()[0]
        where = field_path(first["loc"]) or "document"
        message = "is not part of an export" if first["type"] == "extra_forbidden" else first["msg"]
        raise InvalidInput(where, message) from None
    if header.scope == "public":
        raise InvalidInput(
            "scope",
            "this is a public export, made without admin rights: it leaves out "
            f"{', '.join(ADMIN_ONLY_TABLES)}, so it cannot rebuild the state; export with an "
            "admin key or `pledgewatch export`",
        )
    head = head_revision()
    if header.schema_revision != head:
        raise InvalidInput(
            "schema",
            f"the file was exported at schema {header.schema_revision!r} but this Pledgewatch "
            f"is at {head!r}: import it with the version that exported it, then upgrade",
        )
    return header


def _check_target(session: Session, tables: Sequence[Table]) -> None:
    """Refuse unless the database is migrated to this version's head and holds no state."""
    head = head_revision()
    if not inspect(session.connection()).has_table("alembic_version"):
        raise Conflict("the database has no schema yet: run `pledgewatch db upgrade` first")
    found = set(session.scalars(text("SELECT version_num FROM alembic_version")))
    if found != {head}:
        shown = ", ".join(sorted(found)) or "none"
        raise Conflict(
            f"the database is at schema {shown}, not {head}: run `pledgewatch db upgrade` first"
        )
    # Every writer takes this lock first; holding it, nobody can write while we look and load.
    claim_revision(session)
    for table in tables:
        if table.name in _PRESEEDED:
            continue
        if session.execute(select(literal(1)).select_from(table).limit(1)).first() is not None:
            raise Conflict(
                f"the database is not empty (table {table.name} has rows): import only into a "
                "new database, migrated with `pledgewatch db upgrade`"
            )
    if read_head(session).length != 0:
        raise Conflict("the database is not empty (its ledger has entries)")


def _shown(value: Any, limit: int = 60) -> str:
    text_form = repr(value)
    return text_form if len(text_form) <= limit else text_form[: limit - 1] + "…"


def _parse_datetime(value: Any) -> datetime:
    if not isinstance(value, str):
        raise ValueError(f"must be an RFC 3339 datetime string, not {_shown(value)}")
    try:
        parsed = datetime.fromisoformat(value)
        if parsed.tzinfo is None:
            raise ValueError("naive")
        return parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        raise ValueError(f"{_shown(value)} is not an RFC 3339 datetime with a zone") from None


def _parse_date(value: Any) -> date:
    if not isinstance(value, str) or len(value) != 10:
        raise ValueError(f"must be a date YYYY-MM-DD, not {_shown(value)}")
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{_shown(value)} is not a date YYYY-MM-DD") from None


def _integer_parser(bits: int) -> Callable[[Any], int]:
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1

    def parse(value: Any) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"must be an integer, not {_shown(value)}")
        if not low <= value <= high:
            raise ValueError(f"{value} is out of range for a {bits}-bit integer")
        return value

    return parse


def _parse_float(value: Any) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ValueError(f"must be a number, not {_shown(value)}")
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return float(value)


def _parse_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, not {_shown(value)}")
    return value


def _string_parser(length: int | None) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if not isinstance(value, str):
            raise ValueError(f"must be a string, not {_shown(value)}")
        if length is not None and len(value) > length:
            raise ValueError(f"is {len(value)} characters long; at most {length} fit")
        if "\x00" in value:
            raise ValueError("contains a NUL character, which cannot be stored")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("contains an unpaired surrogate, which cannot be stored") from None
        return value

    return parse


def _any_json(value: Any) -> Any:
    return value


_PARSERS: tuple[tuple[type[TypeEngine[Any]], Callable[[Any], Any]], ...] = (
    (UTCDateTime, _parse_datetime),
    (Date, _parse_date),
    (Boolean, _parse_bool),
    (BigInteger, _integer_parser(64)),
    (Integer, _integer_parser(32)),
    (Float, _parse_float),
    (JSON, _any_json),
)


def _parser(table: Table, column: Column[Any]) -> Callable[[Any], Any]:
    kind = column.type
    if isinstance(kind, String):
        return _string_parser(kind.length)
    for type_, parse in _PARSERS:
        if isinstance(kind, type_):
            return parse
    # A new column type must be taught to import before it can be exported safely.
    raise TypeError(f"import cannot read column {table.name}.{column.name} of type {kind!r}")


@dataclass(slots=True)
class _TablePlan:
    """How to read one table's rows from the document."""

    table: Table
    names: list[str]
    columns: list[Column[Any]]
    parsers: list[Callable[[Any], Any]]
    withheld: list[bool]
    rows: list[Any]

    def key_of(self, raw: Sequence[Any]) -> str:
        """The row's primary key as the error messages name it."""
        parts = []
        for column in self.table.primary_key.columns:
            position = self.names.index(column.name)
            value = raw[position] if position < len(raw) else None
            parts.append(f"{column.name}={_shown(value, 40)}")
        return ", ".join(parts)


def _plan(table: Table, dump: Any) -> _TablePlan:
    where = f"tables.{table.name}"
    if not isinstance(dump, Mapping) or set(dump) != {"columns", "rows"}:
        raise InvalidInput(where, 'must be an object with exactly "columns" and "rows"')
    names, rows = dump["columns"], dump["rows"]
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise InvalidInput(f"{where}.columns", "must be a list of column names")
    if not isinstance(rows, list):
        raise InvalidInput(f"{where}.rows", "must be a list of rows")
    if len(set(names)) != len(names):
        raise InvalidInput(f"{where}.columns", "names a column twice")
    unknown = [name for name in names if name not in table.c]
    if unknown:
        raise InvalidInput(
            f"{where}.columns", f"{', '.join(unknown)}: not a column of {table.name} here"
        )
    missing = [column.name for column in table.columns if column.name not in names]
    if missing:
        raise InvalidInput(f"{where}.columns", f"{', '.join(missing)}: missing")
    columns = [table.c[name] for name in names]
    secret = SECRET_COLUMNS.get(table.name, frozenset())
    return _TablePlan(
        table=table,
        names=names,
        columns=columns,
        parsers=[_parser(table, column) for column in columns],
        withheld=[column.name in secret for column in columns],
        rows=rows,
    )


def _convert(plan: _TablePlan, index: int, report: ImportReport) -> dict[str, Any]:
    raw = plan.rows[index]
    where = f"tables.{plan.table.name}.rows[{index}]"
    if not isinstance(raw, list) or len(raw) != len(plan.columns):
        raise InvalidInput(where, f"must be a list of {len(plan.columns)} values, one per column")
    values: dict[str, Any] = {}
    for column, parse, withheld, value in zip(
        plan.columns, plan.parsers, plan.withheld, raw, strict=True
    ):
        if value is None and withheld:
            values[column.key] = new_secret()
            report.warnings.append(
                f"{plan.table.name} {plan.key_of(raw)}: its {column.name} was withheld from the "
                "export, so it has a new one; tell the receiver, or set it again"
            )
            continue
        if value is None:
            if not column.nullable:
                raise InvalidInput(
                    f"{where}.{column.name}", f"must not be null (row {plan.key_of(raw)})"
                )
            values[column.key] = None
            continue
        try:
            values[column.key] = parse(value)
        except ValueError as error:
            raise InvalidInput(
                f"{where}.{column.name}", f"{error} (row {plan.key_of(raw)})"
            ) from None
    return values


def _store(session: Session, table: Table, rows: list[dict[str, Any]], first: int) -> None:
    try:
        if table.name not in _PRESEEDED:
            session.execute(insert(table), rows)
            return
        for row in rows:
            key = [column == row[column.key] for column in table.primary_key.columns]
            updated = session.execute(update(table).where(*key).values(**row))
            if getattr(updated, "rowcount", 0) == 0:
                session.execute(insert(table).values(**row))
    except DBAPIError as error:
        reason = str(error.orig).strip().splitlines()[0] if error.orig else str(error)
        raise InvalidInput(
            f"tables.{table.name}",
            f"rows {first} to {first + len(rows) - 1} cannot be stored: {reason}",
        ) from None


def _locate(plans: Mapping[str, _TablePlan], subject: str | None) -> str:
    """Where in the file the row of a ledger ``subject`` is: ``tables.pledge.rows[3]``."""
    if subject is None or ":" not in subject:
        return subject or "the ledger"
    type_name, _, key_text = subject.partition(":")
    subject_type = SUBJECT_TYPES.get(type_name)
    if subject_type is None or subject_type.table.name not in plans:
        return subject
    plan = plans[subject_type.table.name]
    try:
        key = subject_type.parse_key(key_text)
    except ValueError:
        return subject
    position = plan.names.index(subject_type.key)
    for index, raw in enumerate(plan.rows):
        if isinstance(raw, list) and len(raw) > position and raw[position] == key:
            return f"tables.{plan.table.name}.rows[{index}] ({subject})"
    return f"{subject} (no such row in tables.{plan.table.name})"


def _reset_sequences(session: Session, tables: Sequence[Table]) -> None:
    """PostgreSQL: move each serial column's sequence past the imported ids.

    Rows were inserted with their ids, which does not advance the sequence; the
    next pledge's evidence would otherwise collide with an imported row.
    """
    for table in tables:
        column = table.autoincrement_column
        if column is None:
            continue
        highest = func.max(column)
        session.execute(
            select(
                func.setval(
                    func.pg_get_serial_sequence(table.name, column.name),
                    func.coalesce(highest, 1),
                    highest.is_not(None),
                )
            ).select_from(table)
        )


def import_document(
    session: Session, document: Any, *, progress: Progress | None = None
) -> ImportReport:
    """Load an export into this empty database, in the caller's transaction, and verify it.

    Refuses (``Conflict``) a database that is not migrated to this version's head
    or already holds state; refuses (``InvalidInput``, naming the table, row and
    column) a document that is not a well-formed export of this schema, or whose
    rows do not verify against its ledger and declared head. On any refusal the
    caller must roll back: nothing is then written.
    """
    header = read_header(document)
    tables = exported_tables()
    raw_tables = document.get("tables")
    if not isinstance(raw_tables, Mapping):
        raise InvalidInput("tables", "must be an object with one entry per table")
    names = {table.name for table in tables}
    for name in raw_tables:
        if name not in names:
            why = f" ({EXCLUDED_TABLES[name]})" if name in EXCLUDED_TABLES else ""
            raise InvalidInput(f"tables.{name}", f"is not a table an export holds{why}")
    plans: dict[str, _TablePlan] = {}
    for table in tables:
        if table.name not in raw_tables:
            raise InvalidInput(f"tables.{table.name}", "is missing")
        plans[table.name] = _plan(table, raw_tables[table.name])

    _check_target(session, tables)

    report = ImportReport(rows={}, ledger=Head(0, ""))
    total = sum(len(plan.rows) for plan in plans.values())
    if progress is not None:
        progress.start("importing", total)
    done = 0
    for table in tables:
        plan = plans[table.name]
        for first in range(0, len(plan.rows), CHUNK_ROWS):
            last = min(first + CHUNK_ROWS, len(plan.rows))
            rows = [_convert(plan, index, report) for index in range(first, last)]
            _store(session, table, rows, first)
            done += len(rows)
            if progress is not None:
                progress.update(done)
        report.rows[table.name] = len(plan.rows)
    session.flush()

    declared = header.ledger
    if progress is not None:
        progress.start("verifying the ledger", declared.length)
    verdict = verify(session, progress=progress.update if progress is not None else None)
    first_bad = verdict.first_bad
    if first_bad is not None:
        entry = f"entry {first_bad.seq}" if first_bad.seq is not None else "a row with no entry"
        raise InvalidInput(
            "ledger",
            f"the rows do not verify against the ledger, so the file was changed after export: "
            f"{entry}, {_locate(plans, first_bad.subject)}: {first_bad.reason}",
        )
    if (verdict.length, verdict.head) != (declared.length, declared.head):
        raise InvalidInput(
            "ledger",
            f"the file declares the ledger ends at entry {declared.length} "
            f"({declared.head[:12]}…) but its entries end at {verdict.length} "
            f"({verdict.head[:12]}…)",
        )
    if session.get_bind().dialect.name == "postgresql":
        _reset_sequences(session, tables)
    report.ledger = Head(verdict.length, verdict.head)
    return report
