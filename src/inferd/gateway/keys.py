"""API keys as the server keeps them: only their SHA-256, written `sha256:<hex>`; a key's id is the first 12 hex
characters of that hash (what `inferd tenants list` prints and `revoke-key` takes)."""

from __future__ import annotations

import hashlib
import hmac
import secrets

__all__ = ["KEY_ID_LENGTH", "PREFIX", "digest_of", "hash_key", "key_id", "new_key", "normalize_key"]

PREFIX = "sha256:"
KEY_ID_LENGTH = 12


def hash_key(plain: str) -> str:
    """`sha256:<hex>` of a plain key."""
    return PREFIX + hashlib.sha256(plain.encode()).hexdigest()


def normalize_key(value: str) -> str:
    """A key as written in the auth file: a `sha256:<hex>` hash is kept (lower-cased), a plain key is hashed."""
    value = value.strip()
    if value.lower().startswith(PREFIX):
        hexdigest = value[len(PREFIX):].lower()
        if len(hexdigest) != 64 or any(c not in "0123456789abcdef" for c in hexdigest):
            raise ValueError(f"'{value[:20]}…' is not a sha256 hash (64 hex characters after 'sha256:')")
        return PREFIX + hexdigest
    if not value:
        raise ValueError("an empty API key")
    return hash_key(value)


def digest_of(hashed: str) -> bytes:
    """The raw 32 bytes of a `sha256:<hex>` hash."""
    return bytes.fromhex(hashed[len(PREFIX):])


def key_id(hashed: str) -> str:
    """The short id of a key: the first 12 hex characters of its SHA-256."""
    return hashed[len(PREFIX):len(PREFIX) + KEY_ID_LENGTH]


def new_key() -> str:
    """A fresh random key (what `inferd tenants add-key` prints once)."""
    return "inferd_" + secrets.token_urlsafe(32)


def same_digest(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)
