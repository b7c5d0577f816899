cdef tuple _accrue(Ledger self, _Batch batch, op):
    cdef long long now_ms = batch.now_ms, captured = 0, spent, txn_id, available
    member, card, rejection = _find_customer(self, batch, op.customer)
    if rejection is not None:
        return rejection, 0
    # A blocked card may not spend; under blocked_card_earns = false it buys for 0 points (the
    # rules see it), and the purchase still counts for tiers and purchase counts.
    if card is not None and card.blocked and (op.redeem_points or op.capture_hold_ids):
        return rejected(Code.FAILED_PRECONDITION, f"customer.card: card '{op.customer.value}' is blocked",
                        Reason.CARD_BLOCKED), 0
    account = _settle(self, batch, _pool(self, batch, member), now_ms, batch)
    holds, rejection = _holds_to_capture(self, batch, op, account)
    if rejection is not None:
        return rejection, 0
    for hold in holds:
        captured += hold.amount
    available = account.active - account.debt - account.held  # the balance's, without building it
    calculation, accepted = _evaluate(self, batch, member, card, op.receipt, now_ms, available,
                                      op.redeem_points, False, captured)
    spent = op.redeem_points + captured
    if spent:  # a purchase that spends nothing has nothing to check against the balance
        rejection = _spend_rejection(self, account, _balance(self, batch, account), op.redeem_points, captured,
                                     calculation.redeemable_points)
        if rejection is not None:
            return rejection, 0

    txn_id = batch.take_id()
    for hold in holds:
        hold.state = HOLD_CAPTURED
        batch.put("holds", id_key(hold.hold_id), _encode(hold))
        account.held -= hold.amount
        account.live_hold_ids.remove(hold.hold_id)
    postings = _consume(self, batch, account, spent) if spent else []
    spent_postings = len(postings)  # the rest are earnings and debt repaid from them
    # Each line's share of what was spent, as the calculation shows it: returning the line gives it back.
    spent_shares = [line.redeemed_points + line.captured_points for line in calculation.lines]
    new_lot, extra_lots, repaid = _earn_calculated(self, batch, account, txn_id, calculation, postings)
    _touch(self, account, now_ms)
    pooled = member.account_id != account.account_id
    if pooled:
        member = _load_account(self, batch, member.account_id)
        _touch(self, member, now_ms)
    else:
        member = account
    member.lifetime_spend_minor += calculation.payable_minor
    member.lifetime_earned_points += calculation.earned_points
    member.purchases += 1
    _record_activity(self, member, now_ms, calculation.payable_minor, calculation.earned_points)
    receipt = op.receipt
    lines = [_JournalLine(line.line_no, source.qty_milli, line.amount_minor, line.discount_minor,
                             line.earned_points, share)
             for line, source, share in zip(calculation.lines, receipt.lines, spent_shares)]
    entry = _TxnRec(
        txn_id, TXN_ACCRUE, op.request_id, account.account_id, now_ms, receipt.store_id,
        receipt.terminal_id, receipt.receipt_no, calculation.total_minor, calculation.payable_minor,
        lines, earned=calculation.earned_points, redeemed=op.redeem_points, captured=captured,
        debt_delta=-repaid,
        new_lot=new_lot, postings=postings, captured_hold_ids=list(op.capture_hold_ids),
        ruleset_version=calculation.ruleset_version, member_id=member.account_id if pooled else "",
        extra_lots=extra_lots, activity_counted=self.program.tracks_activity, spent_postings=spent_postings)
    if calculation.limited or accepted:
        _count(self, batch, entry, calculation.limited, accepted, member.account_id)
    if self.program.grants:
        _grant_tier(self, member, txn_id, calculation, now_ms)
    _journal(self, batch, entry, account, member)
    # The lot just earned into is the one the answer's next expiry usually comes from: not read again.
    result = AccrueResult(txn_id, account.account_id, calculation, _balance(self, batch, account, now_ms, new_lot),
                          captured)
    return Outcome(CODE_OK, body=result), txn_id


cdef tuple _holds_to_capture(Ledger self, _Batch batch, op, account):
    """(the holds `op` captures, None) or (None, rejection): each live, of this account, of the caller's stores."""
    holds = []
    if not op.capture_hold_ids:
        return holds, None
    for index, hold_id in enumerate(op.capture_hold_ids):
        hold, rejection = _capturable(self, batch, account, hold_id, f"capture_hold_ids[{index}]")
        if rejection is not None:
            return None, rejection
        if op.stores:
            made = _decode_txn(batch.get("journal", id_key(hold_id)))
            if made.store_id not in op.stores:
                return None, _foreign_store(made, f"capture_hold_ids[{index}]")
        holds.append(hold)
    return holds, None


cdef tuple _earn_calculated(Ledger self, _Batch batch, account, long long txn_id, calculation, list postings):
    """The lots a purchase earns: the day's lot for its main points, its own lot for each campaign
    with its own activation or lifetime; each pays clawback debt first. (new lot, extra lots, repaid)."""
    new_lot = None
    repaid = 0
    main_points = calculation.earned_points
    if calculation.lots:
        main_points -= sum(points for _, _, points in calculation.lots)
    if main_points:
        new_lot = _earn(self, batch, account, txn_id, main_points, calculation.activate_at_ms,
                        calculation.expire_at_ms, postings)
        repaid = _repay_debt(self, batch, account, new_lot, postings)
    extra_lots = []
    for activates_at_ms, expires_at_ms, points in calculation.lots:
        lot = _own_lot(self, batch, account, points, activates_at_ms, expires_at_ms, postings)
        repaid += _repay_debt(self, batch, account, lot, postings)
        extra_lots.append(lot)
    return new_lot, extra_lots, repaid


def _capturable(Ledger self, _Batch batch, account, hold_id, field):
    stored = batch.get("holds", id_key(hold_id))
    if stored is None:
        return None, rejected(Code.NOT_FOUND, f"{field}: no hold {hold_id}")
    hold = _decode_hold(stored)
    if hold.account_id != account.account_id:
        return None, rejected(Code.FAILED_PRECONDITION, f"{field}: hold {hold_id} belongs to another account",
                              Reason.HOLD_OTHER_ACCOUNT)
    if hold.state == HOLD_EXPIRED:
        return None, rejected(Code.FAILED_PRECONDITION, f"{field}: hold {hold_id} expired", Reason.HOLD_EXPIRED)
    if hold.state != HOLD_LIVE:
        state = rec.HoldState(hold.state).name.lower()
        return None, rejected(Code.FAILED_PRECONDITION, f"{field}: hold {hold_id} is {state}",
                              Reason.HOLD_NOT_ACTIVE)
    return hold, None


cdef object _spend_rejection(Ledger self, account, balance, long long redeem, long long captured,
                            long long redeemable):
    """Why an Accrue may not spend `redeem` points and `captured` held ones on its receipt, or
    None. Captured points count against the receipt's redeemable share as redeemed ones do."""
    if redeem and redeem > balance.available:
        return _redeem_rejection(self, balance, redeem, redeemable)
    spent = redeem + captured
    # Lots may have expired under a live hold: what is spent must still be in the lots, beside
    # what the account's other holds reserve.
    spendable = account.active - account.debt - (account.held - captured)
    if spent and spent > spendable:
        return rejected(Code.FAILED_PRECONDITION,
                        f"capture_hold_ids: the held points are no longer there (lots expired); "
                        f"spendable {spendable}, needed {spent}", Reason.INSUFFICIENT_POINTS)
    if spent > redeemable:
        asked = f"{spent} ({redeem} redeem_points, {captured} in capture_hold_ids)" if captured else f"{spent}"
        return rejected(Code.FAILED_PRECONDITION, f"at most {redeemable} points may pay for this receipt, "
                        f"asked {asked}", Reason.REDEEM_SHARE_EXCEEDED)
    return None


cdef object _redeem_rejection(Ledger self, balance, long long points, long long redeemable):
    if points > balance.available:
        reason = Reason.NEGATIVE_BALANCE if balance.debt else Reason.INSUFFICIENT_POINTS
        return rejected(Code.FAILED_PRECONDITION,
                        f"insufficient points: available {balance.available}, asked {points}", reason)
    if points > redeemable:
        return rejected(Code.FAILED_PRECONDITION,
                        f"at most {redeemable} points may pay for this receipt, asked {points}",
                        Reason.REDEEM_SHARE_EXCEEDED)
    return None


def _redeem(Ledger self, _Batch batch, op):
    now_ms = batch.now_ms
    member, card, rejection = _find_customer(self, batch, op.customer)
    if rejection is not None:
        return rejection, 0
    if card is not None and card.blocked:
        return rejected(Code.FAILED_PRECONDITION, f"customer.card: card '{op.customer.value}' is blocked",
                        Reason.CARD_BLOCKED), 0
    account = _settle(self, batch, _pool(self, batch, member), now_ms, batch)
    balance = _balance(self, batch, account)
    redeemable = op.receipt_total_minor * self.program.max_redeem_share_bps // 10000
    rejection = _redeem_rejection(self, balance, op.points, redeemable)
    if rejection is not None:
        return rejection, 0
    txn_id = batch.take_id()
    entry = rec.TxnRec(txn_id, TXN_HOLD if op.hold else TXN_REDEEM, op.request_id,
                       account.account_id, now_ms, op.store_id, op.terminal_id,
                       total_minor=op.receipt_total_minor,
                       member_id=member.account_id if member.account_id != account.account_id else "")
    _touch(self, account, now_ms)
    if op.hold:
        hold = rec.HoldRec(txn_id, account.account_id, op.points, now_ms + self.hold_ttl_ms)
        batch.put("holds", id_key(txn_id), _encode(hold))
        account.held += op.points
        account.live_hold_ids.append(txn_id)
        entry.held = op.points
        entry.hold_expires_at_ms = hold.expires_at_ms
    else:
        entry.postings = _consume(self, batch, account, op.points)
        entry.redeemed = op.points
    if op.hold:
        _schedule(account, entry.hold_expires_at_ms)
    _journal(self, batch, entry, account, member)
    result = RedeemResult(txn_id, account.account_id, entry.redeemed, entry.held, entry.hold_expires_at_ms,
                          _balance(self, batch, account, now_ms))
    return Outcome(CODE_OK, body=result), txn_id


def _adjust(Ledger self, _Batch batch, op):
    """A manual credit (a new lot with the program's lifetime, to a UTC midnight) or debit (from
    the lots, earliest expiry first, at most what is available), journaled with its reason and
    operator; reversible by Rollback."""
    now_ms = batch.now_ms
    member, rejection = _find_account(self, batch, op.customer)
    if rejection is not None:
        return rejection, 0
    account = _settle(self, batch, _pool(self, batch, member), now_ms, batch)
    if op.points < 0:
        balance = _balance(self, batch, account)
        if -op.points > balance.available:
            return rejected(Code.FAILED_PRECONDITION,
                            f"points: debit of {-op.points} exceeds available {balance.available}",
                            Reason.INSUFFICIENT_POINTS), 0
    txn_id = batch.take_id()
    entry = rec.TxnRec(txn_id, TXN_ADJUST, op.request_id, account.account_id, now_ms, adjusted=op.points,
                       reason=op.reason, operator_id=op.operator_id,
                       member_id=member.account_id if member.account_id != account.account_id else "")
    if op.points > 0:
        entry.new_lot = rec.LotRec(txn_id, account.account_id, op.points, op.points, now_ms,
                                   self.program.credit_expiry(now_ms))
        _add_lot(self, batch, account, entry.new_lot)
        entry.postings = [rec.Posting(txn_id, op.points)]
        entry.debt_delta = -_repay_debt(self, batch, account, entry.new_lot, entry.postings)
    else:
        entry.postings = _consume(self, batch, account, -op.points)
    _touch(self, account, now_ms)
    _journal(self, batch, entry, account, member)
    balance = _balance(self, batch, account, now_ms)
    return Outcome(CODE_OK, body=AdjustResult(txn_id, account.account_id, balance)), txn_id
