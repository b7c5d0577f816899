def _rollback(Ledger self, _Batch batch, op):
    if op.transaction_id:
        target, rejection = _rollback_target(self, batch, "transaction_id", op.transaction_id)
        if rejection is not None:
            return rejection, 0
    else:
        stored = _request_record(batch, op.original_request_id.encode())
        if stored is None:
            return _tombstone(self, batch, op)
        original = _decode_idempotency(stored)
        widened = _widened_tombstone(original, op.stores)
        if widened is not None:
            return _tombstone(self, batch, op, widened)
        if original.txn_id == 0:
            return rejected(Code.FAILED_PRECONDITION,
                            f"original_request_id: '{op.original_request_id}' made no transaction",
                            Reason.NOT_REVERSIBLE), 0
        target, rejection = _rollback_target(self, batch, "original_request_id", original.txn_id)
        if rejection is not None:
            return rejection, 0
    if op.stores and target.store_id not in op.stores:
        return _foreign_store(target, "transaction_id" if op.transaction_id else "original_request_id"), 0
    account = _decode_account(batch.get("accounts", target.account_id.encode()))
    account = _settle(self, batch, account, batch.now_ms, batch)
    if target.kind == TXN_HOLD:
        return _void_hold(self, batch, op, account, target)
    if target.kind in (TXN_REDEEM, TXN_ACCRUE, TXN_ADJUST, TXN_EVENT):
        return _reverse(self, batch, op, account, target)
    return rejected(Code.FAILED_PRECONDITION,
                    f"transaction {target.txn_id} ({TxnKind(target.kind).name.lower()}) cannot be rolled back",
                    Reason.NOT_REVERSIBLE), 0



cdef object _request_record(_Batch batch, bytes request_key):
    """The stored record of a request, in `idempotency` or, past the replay window, `retained`."""
    stored = batch.get("idempotency", request_key)
    if stored is None:
        stored = batch.get("retained", request_key)
    return stored


def _rollback_target(Ledger self, _Batch batch, str field, long long txn_id):
    """(the entry of transaction `txn_id`, None), from the journal or, once archived (past the
    replay window), from the archive; or (None, a refusal naming `field`)."""
    try:
        target = journal_entry(batch.txn, batch.dbs, self.archive, txn_id)
    except ArchiveUnreadable as error:
        # The one case a rollback cannot be made: the entry is archived but its segment cannot be
        # read here (moved or damaged); the reversal must pin what the purchase recorded.
        return None, rejected(Code.FAILED_PRECONDITION, f"{field}: transaction {txn_id} is archived and its "
                              f"segment cannot be read ({error}); restore the archive directory and retry",
                              Reason.NOT_REVERSIBLE)
    if target is None:
        return None, rejected(Code.NOT_FOUND, f"{field}: no transaction {txn_id}")
    return target, None


def _void_hold(Ledger self, _Batch batch, op, account, target):
    if op.return_lines:
        return rejected(Code.INVALID_ARGUMENT, "return_lines: a hold has no lines; omit return_lines to void it"), 0
    hold, rejection = _capturable(self, batch, account, target.txn_id, "transaction_id")
    if rejection is not None:
        if rejection.reason == Reason.HOLD_NOT_ACTIVE:
            state = _decode_hold(batch.get("holds", id_key(target.txn_id))).state
            if state == HOLD_VOIDED:
                return rejected(Code.FAILED_PRECONDITION, f"hold {target.txn_id} was already voided",
                                Reason.ALREADY_ROLLED_BACK), 0
        return rejection, 0
    txn_id = batch.take_id()
    hold.state = HOLD_VOIDED
    batch.put("holds", id_key(hold.hold_id), _encode(hold))
    account.held -= hold.amount
    account.live_hold_ids.remove(hold.hold_id)
    _journal(self, batch, rec.TxnRec(txn_id, TXN_ROLLBACK, op.request_id, account.account_id,
                                     batch.now_ms, op.store_id, op.terminal_id, restored=hold.amount,
                                    reverses=target.txn_id, member_id=target.member_id),
                  account, _load_account(self, batch, target.member_id) if target.member_id else None)
    result = RollbackResult(txn_id, account.account_id, RollbackKind.VOID_HOLD, target.txn_id, 0,
                            hold.amount, 0, _balance(self, batch, account, batch.now_ms))
    return Outcome(CODE_OK, body=result), txn_id


def _reverse(Ledger self, _Batch batch, op, account, target):
    """Cancel or return lines of an ACCRUE, or cancel a REDEEM, pinned to what was recorded."""
    stored = batch.get("reversals", id_key(target.txn_id))
    reversal = _decode_reversal(stored) if stored else rec.ReversalRec()
    if op.return_lines and target.kind != TXN_ACCRUE:
        return rejected(Code.INVALID_ARGUMENT,
                        "return_lines: only a purchase (accrue) has lines; omit return_lines to cancel"), 0
    # A return asks for lines: more than what is left of one is RETURN_EXCEEDS_PURCHASE (from
    # `_returns`) however it came to be gone, by returns or by a cancel. Only a cancel of what
    # is gone in full is ALREADY_ROLLED_BACK.
    if reversal.complete and not op.return_lines:
        return rejected(Code.FAILED_PRECONDITION, f"transaction {target.txn_id} was already rolled back in full",
                        Reason.ALREADY_ROLLED_BACK), 0
    returns, rejection = _returns(self, op, target, reversal)
    if rejection is not None:
        return rejection, 0
    clawback, restore = _reversed_points(target, reversal, returns)
    txn_id = batch.take_id()
    postings = []
    restored, expired_on_restore = _restore(self, batch, account, target, reversal, restore, postings)
    debt, forgiven = _claw(self, batch, account, target, clawback, postings)
    reversal.complete = all(reversal.returned_qty.get(line.line_no, 0) == line.qty_milli for line in target.lines)
    reversal.rollback_ids.append(txn_id)
    batch.put("reversals", id_key(target.txn_id), _encode(reversal))
    account.next_change_at_ms = _next_change(self, batch, account)
    member = _load_account(self, batch, target.member_id) if target.member_id else None
    spender = member if member is not None else account
    if target.kind in (TXN_ACCRUE, TXN_EVENT):
        spend_back = sum(  # telescoping, like the clawback
            (line.amount_minor - line.discount_minor) * reversal.returned_qty.get(line.line_no, 0) // line.qty_milli
            - (line.amount_minor - line.discount_minor)
            * (reversal.returned_qty.get(line.line_no, 0) - returns.get(line.line_no, 0)) // line.qty_milli
            for line in target.lines)
        spender.lifetime_spend_minor -= spend_back
        spender.lifetime_earned_points -= clawback
        if target.activity_counted:  # (a purchase made under a ruleset without tiers added none)
            _record_activity(self, spender, target.created_at_ms, -spend_back, -clawback)
    kind = RollbackKind.CANCEL if not op.return_lines else RollbackKind.RETURN
    # What no point covered is debt on the rollback's entry; under "clamp" a WRITE_OFF entry
    # drops that debt at once, so that each entry's amounts add up to what it changed.
    entry = rec.TxnRec(
        txn_id, TXN_ROLLBACK, op.request_id, account.account_id, batch.now_ms, op.store_id,
        op.terminal_id, target.receipt_no, clawed=clawback, restored=restored, expired=expired_on_restore,
        debt_delta=debt + forgiven, postings=postings, reverses=target.txn_id,
        returned=sorted(returns.items()), member_id=target.member_id)
    if target.limited or target.use_keys:
        _uncount(self, batch, entry, target, returns, reversal, reversal.complete)
    if reversal.complete and spender.tier_grants:
        spender.tier_grants = [grant for grant in spender.tier_grants if grant[2] != target.txn_id]
    _journal(self, batch, entry, account, member)
    if target.kind == TXN_EVENT:
        _outbox_reversed(self, batch, target)
    if forgiven:
        _journal(self, batch, rec.TxnRec(batch.take_id(), TXN_WRITE_OFF, "", account.account_id, batch.now_ms,
                                         forgiven=forgiven, debt_delta=-forgiven, reverses=txn_id,
                                        member_id=target.member_id), account, member)
    result = RollbackResult(txn_id, account.account_id, kind, target.txn_id, clawback, restored, debt,
                            _balance(self, batch, account, batch.now_ms), clawback - debt - forgiven, forgiven)
    return Outcome(CODE_OK, body=result), txn_id


cdef tuple _reversed_points(target, reversal, dict returns):
    """(points to claw back, points to restore) for giving back `returns` of `target`; records the
    returned quantities in `reversal`. Telescoping shares: after returning R of Q units a line has
    given back floor(x * R / Q) of each amount x it carried, so partial returns add up exactly to a
    full one."""
    clawback = 0
    restore = 0
    for line in target.lines:
        before = reversal.returned_qty.get(line.line_no, 0)
        after = before + returns.get(line.line_no, 0)
        clawback += line.earned_points * after // line.qty_milli - line.earned_points * before // line.qty_milli
        restore += line.redeemed_points * after // line.qty_milli - line.redeemed_points * before // line.qty_milli
        reversal.returned_qty[line.line_no] = after
    if target.kind == TXN_REDEEM:
        restore = target.redeemed
    elif target.kind == TXN_EVENT:
        clawback = target.earned
    elif target.kind == TXN_ADJUST:
        clawback, restore = max(target.adjusted, 0), max(-target.adjusted, 0)
    return clawback, restore


def _returns(Ledger self, op, target, reversal):
    """{line_no: qty_milli to give back now}, or a rejection naming the field."""
    if not op.return_lines:
        if target.kind != TXN_ACCRUE:
            return {}, None
        return {line.line_no: line.qty_milli - reversal.returned_qty.get(line.line_no, 0)
                for line in target.lines}, None
    bought = {line.line_no: line.qty_milli for line in target.lines}
    returns = {}
    for index, item in enumerate(op.return_lines):
        field = f"return_lines[{index}]"
        if item.line_no not in bought:
            return None, rejected(Code.INVALID_ARGUMENT,
                                  f"{field}.line_no: transaction {target.txn_id} has no line {item.line_no}")
        if item.line_no in returns:
            return None, rejected(Code.INVALID_ARGUMENT, f"{field}.line_no: line {item.line_no} named twice")
        already = reversal.returned_qty.get(item.line_no, 0)
        if already + item.qty_milli > bought[item.line_no]:
            return None, rejected(
                Code.FAILED_PRECONDITION,
                f"{field}.qty_milli: line {item.line_no} bought {bought[item.line_no]}, returned {already}, "
                f"asked {item.qty_milli}", Reason.RETURN_EXCEEDS_PURCHASE)
        returns[item.line_no] = item.qty_milli
    return returns, None


def _restore(Ledger self, _Batch batch, account, target, reversal, long long points, list postings):
    """Give `points` back to the lots the original took them from, last taken first, each
    with its original expiry. Points whose lot has expired meanwhile stay expired."""
    taken = target.postings if target.spent_postings < 0 else target.postings[:target.spent_postings]
    spent = [posting for posting in taken if posting.delta < 0]
    if len(reversal.restored_per_posting) != len(spent):
        reversal.restored_per_posting = [0] * len(spent)
    restored = 0
    expired = 0
    for index in reversed(range(len(spent))):
        if points == 0:
            break
        posting = spent[index]
        give = min(points, -posting.delta - reversal.restored_per_posting[index])
        if give <= 0:
            continue
        points -= give
        reversal.restored_per_posting[index] += give
        stored = batch.get("lots", id_key(posting.lot_id))
        if stored is None:  # compaction removed it: it had expired
            expired += give
            continue
        lot = _decode_lot(stored)
        burnt = lot.lot_id < account.burnt_below_lot_id
        if burnt or lot.state == LOT_EXPIRED or (lot.expires_at_ms and lot.expires_at_ms <= batch.now_ms):
            expired += give
            continue
        if lot.remaining == 0:
            _open_lot(self, batch, account, lot)
        lot.remaining += give
        account.active += give
        restored += give
        postings.append(rec.Posting(lot.lot_id, give))
        batch.put("lots", id_key(lot.lot_id), _encode(lot))
    return restored, expired


def _claw(Ledger self, _Batch batch, account, target, long long points, list postings):
    """Take back `points` earned by `target`: from its own lot first, then from the account's
    other lots; what no lot covers becomes debt (policy "negative") or is dropped ("clamp")."""
    if points == 0:
        return 0, 0
    # The purchase's own lots first (never shared), then the day's lot it added to.
    own = target.extra_lots + ([target.new_lot] if target.new_lot is not None else [])
    for made in own:
        if points == 0:
            break
        stored = batch.get("lots", id_key(made.lot_id))
        lot = _decode_lot(stored) if stored is not None else None  # None: compaction removed it, ended
        if lot is not None and lot.state != LOT_EXPIRED and lot.remaining:
            take = min(points, lot.remaining)
            lot.remaining -= take
            points -= take
            if lot.state == LOT_PENDING:
                account.pending -= take
            else:
                account.active -= take
            if lot.remaining == 0 and lot.state != LOT_PENDING:
                account.open_lot_ids.remove(lot.lot_id)
            postings.append(rec.Posting(lot.lot_id, -take))
            batch.put("lots", id_key(lot.lot_id), _encode(lot))
    available = max(0, account.active - account.debt - account.held)
    take = min(points, available)
    if take:
        postings.extend(_consume(self, batch, account, take))
        points -= take
    if points == 0:
        return 0, 0
    if self.program.clawback_clamp:
        return 0, points
    account.debt += points
    return points, 0
