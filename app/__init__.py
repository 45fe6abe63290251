"""Pledgewatch: a trust-but-verify monitor of commitments between governments."""

__version__ = "0.1.0"
