"""An If-Match of more digits than int() takes is a stale ETag (412), never a 500."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.factories import PLEDGE_ID, Keys, make_pledge, problem

# Past the 4,300 digits int() converts (Python's guard against quadratic conversions).
TAGS = ["1" * 5000, 'W/"' + "9" * 5000 + '"']


@pytest.mark.parametrize("tag", TAGS)
def test_an_if_match_of_impossible_digits_is_412(client: TestClient, keys: Keys, tag: str) -> None:
    make_pledge(client, keys)
    headers = {**keys["analyst"], "If-Match": tag}
    edit = client.patch(f"/api/v1/pledges/{PLEDGE_ID}", json={"title": "x"}, headers=headers)
    problem(edit, 412)
    change = client.post(
        f"/api/v1/pledges/{PLEDGE_ID}/status",
        json={"status": "in_progress", "reason": "Work began."},
        headers=headers,
    )
    problem(change, 412)
