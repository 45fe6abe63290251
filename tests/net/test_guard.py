"""The guard alone: which URLs ``check_public_url`` lets through, after (injected) DNS.

Nothing here connects anywhere; the fetcher's use of the guard, on every hop, is tested
against real servers in test_client.py.
"""

from __future__ import annotations

import socket

import pytest

from app.net import FetchError, check_public_url
from tests.net.dns import fixed_dns


@pytest.mark.parametrize("url", ["not a url", "http://", "http:///feed", "https://[::1/"])
def test_invalid_urls_are_errors(url: str) -> None:
    with pytest.raises(FetchError):
        check_public_url(url, allow_private=True)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/",
        "http://127.1/",
        "http://2130706433/",  # 127.0.0.1 written as one number
        "http://10.1.2.3/",
        "http://172.16.0.1/",
        "http://192.168.1.1/",
        "http://169.254.169.254/",
        "http://100.64.0.1/",  # carrier-grade NAT
        "http://0.0.0.0/",
        "http://224.0.0.1/",
        "http://255.255.255.255/",
        "http://[::1]/",
        "http://[::]/",
        "http://[fe80::1]/",
        "http://[fc00::1]/",
        "http://[::ffff:10.0.0.1]/",
        "http://[::ffff:127.0.0.1]/",
    ],
)
def test_non_global_literal_addresses_are_refused(url: str) -> None:
    with pytest.raises(FetchError, match="is refused") as caught:
        check_public_url(url, allow_private=False)
    assert caught.value.outcome == "refused"
    check_public_url(url, allow_private=True)  # the same URL passes when private is allowed


@pytest.mark.parametrize(
    "url", ["http://93.184.215.14/feed", "https://1.1.1.1:8443/x", "https://[2606:4700::1111]/"]
)
def test_public_literal_addresses_pass(url: str) -> None:
    check_public_url(url, allow_private=False)  # resolving a literal never leaves the machine


def test_public_name_passes_with_injected_dns() -> None:
    resolve = fixed_dns(
        {"feeds.example": ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"]}
    )
    check_public_url("https://feeds.example/rss", allow_private=False, resolve=resolve)


@pytest.mark.parametrize(
    ("addresses", "reason"),
    [
        (["10.0.0.7"], "private address"),
        (["93.184.215.14", "192.168.0.10"], "private address"),  # one private answer is enough
        (["169.254.169.254"], "link-local address"),
        (["64:ff9b::7f00:1"], "loopback address"),  # NAT64 of 127.0.0.1
        (["2002:7f00:1::"], "loopback address"),  # 6to4 of 127.0.0.1
        (["::ffff:169.254.169.254"], "link-local address"),
        (["fe80::1%eth0"], "link-local address"),
    ],
)
def test_names_resolving_to_non_global_addresses_are_refused(
    addresses: list[str], reason: str
) -> None:
    resolve = fixed_dns({"feeds.example": addresses})
    with pytest.raises(FetchError, match=reason):
        check_public_url("https://feeds.example/rss", allow_private=False, resolve=resolve)


def test_exempt_host_passes_check_public_url() -> None:
    resolve = fixed_dns({"localhost": ["127.0.0.1"]})
    check_public_url(
        "http://LOCALHOST:8000/demo/feed.xml",
        allow_private=False,
        exempt_hosts=frozenset({"localhost:8000"}),
        resolve=resolve,
    )
    with pytest.raises(FetchError, match="is refused"):
        check_public_url(
            "http://localhost:8001/demo/feed.xml",
            allow_private=False,
            exempt_hosts=frozenset({"localhost:8000"}),
            resolve=resolve,
        )


def test_unknown_host_is_a_clear_error() -> None:
    def resolve(host: str, port: int) -> list[str]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    with pytest.raises(FetchError, match=r"could not resolve the host 'nowhere\.example'"):
        check_public_url("https://nowhere.example/", allow_private=False, resolve=resolve)
