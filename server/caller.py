"""Who is calling, as the servicers see it: a value set by the auth interceptor (server/interceptors/
auth.py) for each call, read by the servicers, which check the store of each operation and stamp
the caller on the journal entry it makes."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass


@dataclass(frozen=True)
class Caller:
    name: str  # terminal or operator id, recorded in the journal
    stores: frozenset[str]  # empty: every store
    admin: bool

    def store_refusal(self, store_id: str) -> str | None:
        """Why this caller may not act for `store_id`, or None when it may."""
        if not self.stores or store_id in self.stores:
            return None
        if not store_id:
            return f"store_id: required for '{self.name}', whose key is scoped to stores"
        return f"store_id: '{self.name}' may not act for store '{store_id}'"


ANONYMOUS = Caller("anonymous", frozenset(), True)  # when auth is off
CALLER: contextvars.ContextVar[Caller] = contextvars.ContextVar("kassa_caller", default=ANONYMOUS)
