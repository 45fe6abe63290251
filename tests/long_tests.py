"""The long tier: tests of minutes that ``make test`` leaves out; ``make test-long`` runs them.

``slow`` marks tests that start servers; they stay in ``make test``. A test marked with
``long_test`` as well is skipped unless ``PLEDGEWATCH_LONG_TESTS=1`` (set by
``make test-long``, or a CI job of its own): the 10,000-case Schemathesis run on each
database.
"""

from __future__ import annotations

import os

import pytest

LONG_TESTS = os.environ.get("PLEDGEWATCH_LONG_TESTS", "") not in ("", "0", "false")

long_test = pytest.mark.skipif(
    not LONG_TESTS, reason="a long test: make test-long (PLEDGEWATCH_LONG_TESTS=1) runs it"
)
