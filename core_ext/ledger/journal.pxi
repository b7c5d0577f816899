# -- Idempotency records ------------------------------------------------------------------------

cdef bytes _idempotency_record(bytes digest, long long txn_id, outcome, long long now_ms):
    """The record a retry is answered from. An accepted purchase keeps only what its journal entry
    (made at `now_ms`) does not (`AccrueOutcomeV2`); any other outcome keeps the whole answer
    (`IdempotencyRec`).
    A digest of b"" is a tombstone's: such a request keeps the whole answer too, so that a record
    with an empty digest is always an `IdempotencyRec`."""
    body = outcome.body
    if txn_id == 0 or not digest or type(body) is not AccrueResult:
        return _encode(rec.IdempotencyRec(digest, txn_id, _encode(outcome)))
    calculation = body.calculation
    return _accrue_outcome_v2(digest, txn_id, body.balance, calculation, now_ms, _accrue_outcome_rare(calculation))


cdef _accrue_outcome_rare(calculation):
    """What a plain purchase leaves empty, or None when it is."""
    cdef bint captured_by_line = False
    for line in calculation.lines:
        if line.captured_points:
            captured_by_line = True
            break
    if not (calculation.promo_codes or calculation.explain or calculation.limited or calculation.lots
            or calculation.captured_points or calculation.no_points_reason or captured_by_line):
        return None
    return AccrueOutcomeRare(
        tuple(calculation.promo_codes), tuple(calculation.explain), tuple(calculation.limited),
        tuple(calculation.lots), calculation.captured_points, calculation.no_points_reason,
        tuple([line.captured_points for line in calculation.lines]) if captured_by_line else ())


cdef _rebuilt_accrue(record, entry):
    """The answer `_accrue` gave, from its compact record (either format) and its journal entry
    `entry` (which `_accrue` wrote from the same calculation: lines, totals, points, ruleset,
    account, captured, time)."""
    rare = record.rare if record.rare is not None else NO_RARE
    campaigns, activate_at_ms, expire_at_ms = _accrue_outcome_fields(record, entry.created_at_ms)
    captured_by_line = rare.line_captured_points or (0,) * len(entry.lines)
    lines = tuple([LineResult(line.line_no, line.amount_minor, line.discount_minor, line.earned_points,
                              line.redeemed_points - captured, captured)
                   for line, captured in zip(entry.lines, captured_by_line)])
    calculation = Calculation(
        lines, entry.total_minor, record.discount_minor, entry.payable_minor, entry.earned,
        record.redeemable_points, record.redeemed_points, campaigns, entry.ruleset_version,
        activate_at_ms, expire_at_ms, rare.promo_codes, rare.explain, rare.limited,
        rare.lots, rare.captured_points, rare.no_points_reason)
    return Outcome(CODE_OK, body=AccrueResult(entry.txn_id, entry.account_id, calculation, record.balance,
                                              entry.captured))


cdef inline bint _spared_by_tombstone(record, op):
    """A tombstone written by a key scoped to other stores than `op`'s does not cancel it: `op`
    is applied as if the tombstone were not there (and its own record replaces it)."""
    return record.digest == TOMBSTONE_DIGEST and record.stores and store_of(op) not in record.stores


cdef _widened_tombstone(record, tuple stores):
    """The stores a tombstone covers once a caller scoped to `stores` (() for any) rolls the same
    original back too; None when it covers them already (or `record` is no tombstone)."""
    if record.digest != TOMBSTONE_DIGEST or not record.stores:
        return None
    if not stores:
        return []
    missing = [store for store in stores if store not in record.stores]
    return sorted(record.stores + missing) if missing else None


cdef inline long long _previous_of(entry, str account_id):
    """The account's entry before `entry` in its statement (0: none)."""
    return entry.prev_id if entry.account_id == account_id else entry.member_prev_id


cdef void _journal(Ledger self, _Batch batch, entry, account, member=None) except *:
    """Append `entry` and link it into the statement of `account` (and of the group `member`
    who made it): each account keeps its newest entry's id, each entry the previous one's.
    Saves the account objects, which the caller keeps using."""
    cdef int kind = entry.kind
    entry.actor = SYSTEM_ACTOR if kind == TXN_EXPIRE or kind == TXN_DEBT_REPAID or kind == TXN_WRITE_OFF else batch.actor
    entry.prev_id = account.last_txn_id
    account.last_txn_id = entry.txn_id
    _save_account(self, batch, account)
    if entry.member_id:
        entry.member_prev_id = member.last_txn_id
        member.last_txn_id = entry.txn_id
        _save_account(self, batch, member)
    batch.append("journal", id_key(entry.txn_id), _encode_txn(entry))


cdef object _replay(Ledger self, _Batch batch, op, record):
    if record.digest == TOMBSTONE_DIGEST:
        return rejected(Code.FAILED_PRECONDITION,
                        f"request_id '{op.request_id}' was rolled back before it arrived",
                        Reason.ROLLED_BACK_BEFORE_ARRIVAL)
    if record.digest != op.digest:
        return rejected(Code.ALREADY_EXISTS,
                        f"request_id '{op.request_id}' was used before with a different payload")
    if type(record) is AccrueOutcomeV2 or type(record) is AccrueOutcomeRec:
        try:
            entry = journal_entry(batch.txn, batch.dbs, self.archive, record.txn_id)
        except ArchiveUnreadable as error:  # the answer is rebuilt from an archived entry that cannot be read
            return rejected(Code.FAILED_PRECONDITION, f"request_id '{op.request_id}': its answer is rebuilt from the journal "
                            f"archive, which cannot be read here ({error}); restore the archive directory and retry")
        return _rebuilt_accrue(record, entry)
    if type(record) is RetainedRec:  # past the replay window: refused, never applied again
        return answer_not_kept(op, record)
    return _decode_outcome(record.outcome)


def _tombstone(Ledger self, _Batch batch, op, stores=None):
    """Rollback of a transaction that has not arrived: remember it, so the late original is
    refused. It keeps the caller's stores (`stores`, when given: a widened tombstone's), so it
    cancels only an original the caller could have rolled back had it arrived first."""
    outcome = Outcome(CODE_OK, body=RollbackResult(0, "", RollbackKind.PENDING_ORIGINAL, 0, 0, 0, 0, Balance()))
    record = rec.IdempotencyRec(TOMBSTONE_DIGEST, 0, b"", list(op.stores) if stores is None else stores)
    batch.put("idempotency", op.original_request_id.encode(), _encode(record))
    batch.put("aging", aging_key(batch.now_ms, op.original_request_id.encode()), b"")
    return outcome, 0


def _foreign_store(target, field):
    return rejected(Code.PERMISSION_DENIED, f"{field}: transaction {target.txn_id} belongs to store "
                    f"'{target.store_id}', outside the caller's stores")
