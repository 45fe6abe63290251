"""Injected DNS for the guard's tests: names resolve to what a test says, and nothing else."""

from __future__ import annotations

from app.net import Resolver


def fixed_dns(table: dict[str, list[str]]) -> Resolver:
    """A resolver answering from ``table`` (a name it lacks is a KeyError, failing the test)."""

    def resolve(host: str, port: int) -> list[str]:
        return table[host]

    return resolve
