"""Target 8's coherence: a status change written through one process, seen by another.

Used by the benchmark and by tests/e2e/test_coherence.py.
"""

from __future__ import annotations

import time

import httpx

API = "/api/v1"


class NotCoherent(AssertionError):
    """The reader never showed the writer's change within the time allowed."""


def change_and_watch(
    writer: httpx.Client,
    reader: httpx.Client,
    pledge_id: str,
    *,
    analyst_key: str,
    give_up_after: float = 10.0,
    poll_every: float = 0.005,
) -> float:
    """Change ``pledge_id``'s status through ``writer``; seconds until ``reader``'s ETag moves.

    The clock starts when the writer has answered ``201`` (the change is committed
    then) and stops at the first ``/status`` of the reader that is not a ``304`` for
    the ETag it showed before. Raises NotCoherent after ``give_up_after`` seconds.
    """
    before = reader.get(f"{API}/status")
    before.raise_for_status()
    etag = before.headers["etag"]
    current = writer.get(f"{API}/pledges/{pledge_id}")
    current.raise_for_status()
    status = "stalled" if current.json()["status"] == "in_progress" else "in_progress"
    written = writer.post(
        f"{API}/pledges/{pledge_id}/status",
        json={"status": status, "reason": "Coherence check.", "reopen": True},
        headers={"Authorization": f"Bearer {analyst_key}"},
    )
    if written.status_code != 201:
        raise NotCoherent(f"the change was refused: {written.status_code} {written.text[:300]}")
    committed = time.perf_counter()
    while True:
        seen = reader.get(f"{API}/status", headers={"If-None-Match": etag})
        elapsed = time.perf_counter() - committed
        if seen.status_code == 200:
            if seen.headers["etag"] == etag:
                raise NotCoherent("a 200 with the old ETag: the reader ignored If-None-Match")
            row = next(p for p in seen.json()["pledges"] if p["id"] == pledge_id)
            if row["status"] != status:
                raise NotCoherent(f"a new ETag but the pledge is {row['status']}, not {status}")
            return elapsed
        if seen.status_code != 304:
            raise NotCoherent(f"the reader answered {seen.status_code}")
        if elapsed > give_up_after:
            raise NotCoherent(f"the reader still showed {etag} after {elapsed:.1f} s")
        time.sleep(poll_every)
