# Partitions: an empty member joining a group in another partition moves there (server/partition_commit.py).
# `_move_out` takes it out of its partition: its account record, identifiers, journal entries and
# their requests' idempotency records leave, and wait in the outbox as a `MoveInOp`; `_move_in`
# puts them into the group's partition under new transaction ids (its statement stays one chain,
# its ids growing) and joins the group. Only a member whose history is its record's (created, cards,
# attributes) moves: one that ever had points, holds or debt is refused.

MOVABLE_KINDS = (TxnKind.CREATE_ACCOUNT, TxnKind.ISSUE_CARD, TxnKind.BLOCK_CARD, TxnKind.SET_ATTRIBUTES)


def _move_out(Ledger self, _Batch batch, op):
    join = op.join
    member = _load_account(self, batch.get, join.account_id)
    if member is None:
        return rejected(Code.NOT_FOUND, f"account_id: no account '{join.account_id}'"), 0
    if member.parent_id or member.member_ids:
        return rejected(Code.FAILED_PRECONDITION, "account_id: groups are one level deep and an account "
                        "belongs to at most one", Reason.ALREADY_IN_GROUP), 0
    member = _settle(self, batch.get, member, batch.now_ms, batch)
    if member.active or member.pending or member.held or member.debt:
        return rejected(Code.FAILED_PRECONDITION, f"account_id: '{member.account_id}' holds points, holds or "
                        "debt; a member joins empty", Reason.ACCOUNT_NOT_EMPTY), 0
    entries, refusal = _movable_history(self, batch, member, join)
    if refusal is not None:
        return refusal, 0
    requests = []
    for entry in entries:
        key = entry.request_id.encode()
        stored = batch.get("idempotency", key)
        if stored is not None:
            requests.append((key, bytes(stored)))
            _delete(batch, "idempotency", key)
        _delete(batch, "journal", id_key(entry.txn_id))
    idents = []
    for key in [ident_key(ID_CARD, card) for card in member.cards] + ([ident_key(ID_PHONE, member.phone)]
                                                                      if member.phone else []):
        stored = batch.get("idents", key)
        if stored is not None:
            idents.append((key, bytes(stored)))
            _delete(batch, "idents", key)
    account = bytes(batch.get("accounts", member.account_id.encode()))
    _delete(batch, "accounts", member.account_id.encode())
    moving = MoveInOp(join.request_id, join.digest, join, account, tuple(idents),
                      tuple(_encode(entry) for entry in reversed(entries)), tuple(requests), join.actor)
    batch.put("outbox", MOVE_PREFIX + join.request_id.encode(), _encode(moving))
    return Outcome(CODE_OK), 0


def _movable_history(Ledger self, _Batch batch, member, join):
    """(the member's journal entries, newest first, None), or (None, the refusal) when one of them
    is more than its record's."""
    entries = []
    next_id = member.last_txn_id
    while next_id:
        stored = batch.get("journal", id_key(next_id))
        entry = None if stored is None else _decode_txn(stored)
        if entry is None or entry.kind not in MOVABLE_KINDS or entry.member_id or member.lifetime_earned_points:
            return None, rejected(
                Code.FAILED_PRECONDITION, f"account_id: '{member.account_id}' has a history of points in another "
                f"partition than '{join.parent_account_id}'; only a member that never had points moves into "
                "the group's partition", Reason.ACCOUNT_NOT_EMPTY)
        entries.append(entry)
        next_id = entry.prev_id
    return entries, None


def _move_in(Ledger self, _Batch batch, op):
    member = _decode_account(op.account)
    if _load_account(self, batch.get, member.account_id) is not None:
        return rejected(Code.ALREADY_EXISTS, f"account_id: '{member.account_id}' is in this partition already"), 0
    renumbered = {}
    previous_id = 0
    for stored in op.entries:  # oldest first: the new ids keep their order
        entry = _decode_txn(stored)
        renumbered[entry.txn_id] = batch.take_id()
        entry.txn_id, entry.prev_id = renumbered[entry.txn_id], previous_id
        previous_id = entry.txn_id
        batch.put("journal", id_key(entry.txn_id), _encode_txn(entry))
    for key, stored in op.requests:
        record = _decode_idempotency(stored)
        record.txn_id = renumbered.get(record.txn_id, record.txn_id)
        prefix = stored[:1] if type(record) is not rec.IdempotencyRec else b""
        batch.put("idempotency", key, prefix + _encode(record))
    for key, stored in op.idents:
        batch.put("idents", key, stored)
    member.last_txn_id = previous_id
    _save_account(self, batch, member)
    return _join_group(self, batch, op.join)


def _delete(_Batch batch, str name, bytes key):
    cursor = batch._cursor(name)
    if cursor.set_key(key):
        cursor.delete()
