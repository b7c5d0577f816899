"""A partition's digest: one hash over every key and value of every database of its LMDB, read in
one transaction. Two replicas at the same log sequence have equal digests; a digest says nothing
about the files' bytes (page layout differs between a compacted copy and its source)."""

from __future__ import annotations

import hashlib

DIGEST_ALGORITHM = "sha256"


def ledger_digest(ledger) -> str:
    """Hex digest over (database name, key, value) of every named database, in name then key order.
    The names come from the environment's main database, so databases the ledger gains later count
    without a change here."""
    env = ledger.env.env
    hashed = hashlib.new(DIGEST_ALGORITHM)
    with ledger.env.begin() as txn:  # through the ledger's resize gate
        names = [key for key, _ in txn.cursor()]
    dbs = [(name, env.open_db(name, create=False)) for name in names]
    with ledger.env.begin() as txn:  # through the ledger's resize gate
        for name, db in dbs:
            hashed.update(len(name).to_bytes(4, "big") + name)
            for key, value in txn.cursor(db=db):
                hashed.update(len(key).to_bytes(4, "big") + key + len(value).to_bytes(4, "big") + value)
    return hashed.hexdigest()
