"""Who a role talks to: the drafter's verifier allowlist (the bearer token itself is checked by
the interceptors)."""

from __future__ import annotations

from typing import Collection

from specgrove.errors import PermissionDenied


def allow_verifier(address: str, allowed: Collection[str]) -> str:
    """``address`` when this drafter may stream to it (and send it its token): one of ``allowed``,
    named exactly as configured, or any when no list was configured."""
    if allowed and address not in allowed:
        raise PermissionDenied(f"verifier: this drafter streams only to its configured verifiers "
                               f"({', '.join(sorted(allowed))}), not to {address!r}")
    return address
