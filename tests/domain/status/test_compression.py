"""``/status`` answers gzip to clients that accept it: compressed once per version, with its
own ETag, ``Vary: Accept-Encoding`` and 304s that stay right for each coding."""

from __future__ import annotations

import gzip
import json
import os
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.domain.status.view_cache import StatusViewCache, accepts_gzip, gzip_etag
from tests.factories import Keys, make_pledge

API = "/api/v1"
GZIP = {"Accept-Encoding": "gzip"}
IDENTITY = {"Accept-Encoding": "identity"}


def raw_body(client: TestClient, headers: dict[str, str]) -> tuple[dict[str, str], bytes]:
    """The answer's headers and its body exactly as sent (not decompressed)."""
    with client.stream("GET", f"{API}/status", headers=headers) as response:
        assert response.status_code == 200, response.read()
        return dict(response.headers), b"".join(response.iter_raw())


@pytest.fixture
def pledged(client: TestClient, keys: Keys) -> None:
    make_pledge(client, keys)


@pytest.mark.usefixtures("pledged")
def test_gzip_is_sent_to_clients_that_accept_it(client: TestClient) -> None:
    zipped_headers, zipped = raw_body(client, GZIP)
    plain_headers, plain = raw_body(client, IDENTITY)

    assert zipped_headers["content-encoding"] == "gzip"
    assert "content-encoding" not in plain_headers
    assert gzip.decompress(zipped) == plain
    assert int(zipped_headers["content-length"]) == len(zipped)
    assert json.loads(plain)["pledges"][0]["id"] == "us-cn-test-pledge"
    for headers in (zipped_headers, plain_headers):
        assert headers["vary"] == "Accept-Encoding"
        assert headers["content-type"] == "application/json"
        assert int(headers["x-pledgewatch-ledger-length"]) > 0
        assert len(headers["x-pledgewatch-ledger-head"]) == 64


@pytest.mark.usefixtures("pledged")
def test_each_coding_has_its_own_strong_etag(client: TestClient) -> None:
    zipped_headers, _ = raw_body(client, GZIP)
    plain_headers, _ = raw_body(client, IDENTITY)

    plain_etag = plain_headers["etag"]
    assert not plain_etag.startswith("W/")
    assert zipped_headers["etag"] == gzip_etag(plain_etag) != plain_etag


@pytest.mark.usefixtures("pledged")
def test_not_modified_compares_the_etag_of_the_coding_asked_for(client: TestClient) -> None:
    zipped_etag = client.get(f"{API}/status", headers=GZIP).headers["etag"]
    plain_etag = client.get(f"{API}/status", headers=IDENTITY).headers["etag"]

    for accept, etag in ((GZIP, zipped_etag), (IDENTITY, plain_etag)):
        not_modified = client.get(f"{API}/status", headers={**accept, "If-None-Match": etag})
        assert not_modified.status_code == 304
        assert not_modified.headers["etag"] == etag
        assert not_modified.headers["vary"] == "Accept-Encoding"
        assert not_modified.content == b""
    # The other coding's ETag names other bytes: the client gets them, not a 304.
    crossed = client.get(f"{API}/status", headers={**GZIP, "If-None-Match": plain_etag})
    assert crossed.status_code == 200
    assert crossed.headers["content-encoding"] == "gzip"
    weak = client.get(f"{API}/status", headers={**GZIP, "If-None-Match": f"W/{zipped_etag}"})
    assert weak.status_code == 304


def test_a_write_makes_a_new_gzip_etag(client: TestClient, keys: Keys) -> None:
    make_pledge(client, keys, "first-pledge")
    before = client.get(f"{API}/status", headers=GZIP).headers["etag"]
    make_pledge(client, keys, "second-pledge")

    after = client.get(f"{API}/status", headers={**GZIP, "If-None-Match": before})

    assert after.status_code == 200
    assert after.headers["etag"] != before
    assert [row["id"] for row in after.json()["pledges"]] == ["first-pledge", "second-pledge"]


def test_each_version_is_compressed_once(
    client: TestClient, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    compressed: list[int] = []
    real_compress = gzip.compress

    def counting_compress(data: bytes, **options: Any) -> bytes:
        compressed.append(len(data))
        return real_compress(data, **options)

    monkeypatch.setattr(gzip, "compress", counting_compress)
    make_pledge(client, keys)
    first = [client.get(f"{API}/status", headers=GZIP).content for _ in range(5)]
    assert len(compressed) == 1
    assert len(set(first)) == 1

    make_pledge(client, keys, "another-pledge")
    for _ in range(3):
        client.get(f"{API}/status", headers=GZIP)
    assert len(compressed) == 2
    # A filtered view is another body, compressed once too.
    for _ in range(3):
        client.get(f"{API}/status", params={"kind": "concern"}, headers=GZIP)
    assert len(compressed) == 3


def test_the_cache_keeps_one_compressed_copy_per_version() -> None:
    cache = StatusViewCache(capacity=2)
    body = b'{"pledges": []}' * 100
    cache.put('"r1"', body)

    once = cache.gzipped('"r1"', body)
    again = cache.gzipped('"r1"', body)

    assert once is again
    assert gzip.decompress(once) == body
    # Evicted with its body: a version no longer cached is compressed but not kept.
    cache.put('"r2"', b"two")
    cache.put('"r3"', b"three")
    assert cache.get('"r1"') is None
    assert cache.gzipped('"r1"', body) is not once


def test_the_cache_holds_at_most_its_bytes_oldest_out_first() -> None:
    cache = StatusViewCache(capacity=100, max_bytes=1000)
    for version in range(5):
        # Random bytes: their gzip coding is no smaller than they are.
        cache.put(f'"r{version}"', os.urandom(300))
    # 300 bytes each: three fit.
    assert [cache.get(f'"r{v}"') is not None for v in range(5)] == [False, False, True, True, True]
    assert cache.size_bytes == 900

    # A gzip coding counts too, and makes room by evicting the least recently used.
    cache.get('"r2"')
    body = cache.get('"r4"')
    assert body is not None
    coded = cache.gzipped('"r4"', body)
    assert len(coded) > 300
    assert cache.size_bytes == 600 + len(coded)
    assert cache.get('"r3"') is None
    assert cache.get('"r2"') is not None

    # A body larger than the whole budget is still kept, alone: the newest always is.
    cache.put('"big"', bytes(5000))
    assert cache.get('"big"') is not None
    assert cache.size_bytes == 5000
    cache.put('"big"', bytes(10))
    assert cache.size_bytes == 10


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, False),
        ("", False),
        ("gzip", True),
        ("GZip", True),
        ("x-gzip", True),
        ("deflate, gzip;q=0.5", True),
        ("gzip;q=0", False),
        ("gzip; q=0.0, deflate", False),
        ("identity", False),
        ("br", False),
        ("*", True),
        ("*;q=0", False),
        ("gzip;q=0, *", False),
        ("*;q=0, gzip", True),
        ("gzip;q=nonsense", False),
    ],
)
def test_accept_encoding_is_read_with_its_q_values(header: str | None, expected: bool) -> None:
    assert accepts_gzip(header) is expected
