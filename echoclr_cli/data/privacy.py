"""De-identification: salted id hashes.

A hashed id is ``'p'|'s'|'v' + 15 hex digits`` of ``sha256(salt \\0 kind \\0 value)``; it never
parses as a number.
"""

from __future__ import annotations

import hashlib


def hash_id(salt: str, kind: str, value: str) -> str:
    """Salted, de-identifying id: 'p'/'s'/'v' + 15 hex digits (never parses as a number)."""
    digest = hashlib.sha256(f"{salt}\x00{kind}\x00{value}".encode()).hexdigest()
    return kind[0] + digest[:15]
