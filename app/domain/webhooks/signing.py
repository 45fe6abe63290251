"""How deliveries are signed: two signatures with one key.

A subscription's secret is stored as text; the HMAC key is that text's UTF-8
bytes. ``X-Pledgewatch-Signature`` (the original scheme, kept for the
receivers that rely on it) is ``sha256=`` and the hex HMAC-SHA256 of the body.
The Standard Webhooks headers (https://www.standardwebhooks.com) sign
``{webhook-id}.{webhook-timestamp}.{body}`` with the same key, base64, and the
secret is shown in their form, ``whsec_`` and the base64 of the key: so a
subscription made before the Standard Webhooks headers existed verifies both
ways, its receiver's secret turned into ``whsec_`` form by base64-encoding it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

WHSEC_PREFIX = "whsec_"

SIGNATURE_HEADER = "X-Pledgewatch-Signature"
STANDARD_ID_HEADER = "webhook-id"
STANDARD_TIMESTAMP_HEADER = "webhook-timestamp"
STANDARD_SIGNATURE_HEADER = "webhook-signature"


def signing_key(secret: str) -> bytes:
    """The HMAC key of a stored secret: its UTF-8 bytes."""
    return secret.encode("utf-8")


def shown_secret(secret: str) -> str:
    """The secret as a subscriber is shown it: ``whsec_`` and the base64 of its key."""
    return WHSEC_PREFIX + base64.b64encode(signing_key(secret)).decode("ascii")


def stored_secret(whsec: str) -> str:
    """The stored form of a ``whsec_`` secret; ValueError unless its key is UTF-8 text
    (as every key this service makes or shows is)."""
    encoded = whsec.removeprefix(WHSEC_PREFIX)
    # Padding may be left out, as Standard Webhooks libraries allow.
    padded = encoded + "=" * (-len(encoded) % 4)
    try:
        return base64.b64decode(padded, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise ValueError(
            "a whsec_ secret must be the base64 of UTF-8 text here; give the secret itself, "
            "or leave it out to have one made"
        ) from None


def signature(secret: str, body: bytes) -> str:
    """The value of X-Pledgewatch-Signature: ``sha256=`` and the hex HMAC-SHA256 of ``body``."""
    digest = hmac.new(signing_key(secret), body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def standard_signature(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The value of ``webhook-signature``: ``v1,`` and the base64 HMAC-SHA256 of
    ``{message_id}.{timestamp}.{body}``."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(signing_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def signed_headers(secret: str, message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """Every signature header of one attempt: both schemes, for the attempt's ``timestamp``
    (unix seconds). ``message_id`` is the delivery's id, the same on every attempt."""
    return {
        SIGNATURE_HEADER: signature(secret, body),
        STANDARD_ID_HEADER: message_id,
        STANDARD_TIMESTAMP_HEADER: str(timestamp),
        STANDARD_SIGNATURE_HEADER: standard_signature(secret, message_id, timestamp, body),
    }
