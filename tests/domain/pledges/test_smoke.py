from fastapi.testclient import TestClient

from tests.factories import pledge_body


def test_create_and_read(client: TestClient, keys: dict[str, dict[str, str]]) -> None:
    created = client.post("/api/v1/pledges", json=pledge_body(), headers=keys["analyst"])
    assert created.status_code == 201, created.text
    got = client.get("/api/v1/pledges/us-cn-test-pledge")
    assert got.status_code == 200
    assert got.json()["status"] == "not_yet_rated"
    status = client.get("/api/v1/status")
    assert status.status_code == 200, status.text
    assert [p["id"] for p in status.json()["pledges"]] == ["us-cn-test-pledge"]
