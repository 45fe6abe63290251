from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, UTCDateTime


class LedgerEntry(Base):
    """One link of the hash chain: a write, the row it wrote (by hash) and the entry before it.

    ``hash`` = sha256(``prev_hash`` + canonical JSON of ``seq``, ``at``, ``kind``,
    ``subject`` and ``payload_hash``), so changing or removing any entry breaks
    every hash after it.
    """

    __tablename__ = "ledger_entry"
    __table_args__ = (
        # The latest entry of each subject is what verification compares with its row.
        Index("ix_ledger_entry_subject_seq", "subject", "seq"),
    )

    # Gap-free: given out under the revision lock, never by a database sequence.
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    kind: Mapped[str] = mapped_column(String(40))
    subject: Mapped[str] = mapped_column(String(160))
    payload_hash: Mapped[str] = mapped_column(String(64))
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))
