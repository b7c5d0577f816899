cdef object _settle(Ledger self, object get, account, long long now_ms, _Batch batch=None):
    """Bring `account` to `now_ms`: activate due lots, expire due lots and holds.

    With `batch` the changes are written (and expiry journaled); without, `account` is a
    private copy updated for reading only."""
    if batch is not None and not account.lots_by_expiry:
        _order_lots(self, get, account)
    cdef long long next_change_at_ms = account.next_change_at_ms
    if next_change_at_ms == 0 or now_ms < next_change_at_ms:
        return account
    expired_postings = []
    expired = 0
    repaid_postings = []
    repaid = 0
    open_lot_ids = []
    burn_ms = self.program.inactivity_burn_ms
    burn = burn_ms and account.last_activity_at_ms and now_ms >= account.last_activity_at_ms + burn_ms
    if burn:
        account.last_activity_at_ms = 0
        if batch is not None:
            account.burnt_below_lot_id = batch.next_id
    for lot_id in account.open_lot_ids:
        lot = _decode_lot(_read(get, "lots", id_key(lot_id)))
        changed = False
        if burn and lot.state == LOT_PENDING:
            lot.state = LOT_ACTIVE  # burnt below with the active ones
            account.pending -= lot.remaining
            account.active += lot.remaining
            changed = True
        if lot.state == LOT_PENDING and lot.activates_at_ms <= now_ms:
            lot.state = LOT_ACTIVE
            account.pending -= lot.remaining
            account.active += lot.remaining
            changed = True
            # Points that become active pay clawback debt first, as points earned active do.
            repay = min(account.debt, lot.remaining)
            if repay > 0:
                lot.remaining -= repay
                account.active -= repay
                account.debt -= repay
                repaid += repay
                repaid_postings.append(rec.Posting(lot_id, -repay))
        if lot.state == LOT_ACTIVE and (burn or (lot.expires_at_ms and lot.expires_at_ms <= now_ms)):
            lot.state = LOT_EXPIRED
            account.active -= lot.remaining
            expired += lot.remaining
            if lot.remaining:
                expired_postings.append(rec.Posting(lot_id, -lot.remaining))
            lot.remaining = 0
            changed = True
        if lot.state != LOT_EXPIRED and (lot.remaining or lot.state == LOT_PENDING):
            open_lot_ids.append(lot_id)
        if changed and batch is not None:
            batch.put("lots", id_key(lot_id), _encode(lot))
        elif changed and type(get) is _ReadView:
            (<_ReadView>get).lots[id_key(lot_id)] = _encode(lot)
    account.open_lot_ids = open_lot_ids
    _expire_holds(get, account, now_ms, batch)
    account.next_change_at_ms = _next_change(self, get, account)
    if batch is not None:
        # Saved now: a refusal after the settle must not leave the lots and holds it changed
        # out of step with the account's totals.
        _save_account(self, batch, account)
        if repaid:
            _journal(self, batch, rec.TxnRec(batch.take_id(), TXN_DEBT_REPAID, "", account.account_id,
                                             now_ms, debt_delta=-repaid, postings=repaid_postings), account)
        if expired:
            entry = rec.TxnRec(batch.take_id(), TXN_EXPIRE, "", account.account_id, now_ms,
                               expired=expired, postings=expired_postings)
            _journal(self, batch, entry, account)
    return account


cdef void _expire_holds(object get, account, long long now_ms, _Batch batch) except *:
    """Holds of `account` past their expiry give their points back (written with `batch`)."""
    live_hold_ids = []
    for hold_id in account.live_hold_ids:
        hold = _decode_hold(_read(get, "holds", id_key(hold_id)))
        if hold.expires_at_ms <= now_ms:
            hold.state = HOLD_EXPIRED
            account.held -= hold.amount
            if batch is not None:
                batch.put("holds", id_key(hold_id), _encode(hold))
        else:
            live_hold_ids.append(hold_id)
    account.live_hold_ids = live_hold_ids


cdef void _schedule(account, long long at_ms) except *:
    """Make sure a settle runs by `at_ms`. `next_change_at_ms` may be early, never late: an
    early settle finds nothing due and recomputes it."""
    if at_ms == 0:
        return
    cdef long long next_change_at_ms = account.next_change_at_ms
    if next_change_at_ms == 0 or at_ms < next_change_at_ms:
        account.next_change_at_ms = at_ms


cdef object _next_change(Ledger self, object get, account):
    times = []
    for lot_id in account.open_lot_ids:
        lot = _decode_lot(_read(get, "lots", id_key(lot_id)))
        if lot.state == LOT_PENDING:
            times.append(lot.activates_at_ms)
        elif lot.expires_at_ms:
            times.append(lot.expires_at_ms)
    for hold_id in account.live_hold_ids:
        times.append(_decode_hold(_read(get, "holds", id_key(hold_id))).expires_at_ms)
    if self.program.inactivity_burn_ms and account.last_activity_at_ms:
        times.append(account.last_activity_at_ms + self.program.inactivity_burn_ms)
    return min(times) if times else 0


cdef object _balance(Ledger self, object get, account, long long expiry_at_ms=0, known_lot=None):
    """The account's balance; with `expiry_at_ms` (now) also the next expiry after it, from its
    lots as a settle at that moment left them. Every balance an answer carries has it (the
    checks inside a write need only the totals): lots kept in expiry order are read only up to
    the first expiry past the next one, so a write's answer reads a lot or two, not all.
    `known_lot`: a lot the caller holds as it last wrote it, used instead of reading it back."""
    cdef long long next_expiry_at_ms = 0, next_expiry_points = 0
    cdef bint ordered = account.lots_by_expiry
    for lot_id in (account.open_lot_ids if expiry_at_ms else ()):
        if known_lot is not None and known_lot.lot_id == lot_id:
            lot = known_lot  # as this operation wrote it
        else:
            lot = _decode_lot(_read(get, "lots", id_key(lot_id)))
        if ordered and next_expiry_at_ms and lot.expires_at_ms != next_expiry_at_ms:
            break
        active = lot.state == LOT_ACTIVE or (
            lot.state == LOT_PENDING and lot.activates_at_ms <= expiry_at_ms)
        if not active or not lot.expires_at_ms or lot.expires_at_ms <= expiry_at_ms or not lot.remaining:
            continue
        if next_expiry_at_ms == 0 or lot.expires_at_ms < next_expiry_at_ms:
            next_expiry_at_ms, next_expiry_points = lot.expires_at_ms, lot.remaining
        elif lot.expires_at_ms == next_expiry_at_ms:
            next_expiry_points += lot.remaining
    active = account.active - account.debt
    return Balance(active, account.pending, account.held, active - account.held, account.debt,
                   next_expiry_at_ms, next_expiry_points)


cdef void _order_lots(Ledger self, object get, account) except *:
    """Put the open lots of an account written before they were kept in order in that order."""
    lots = sorted([_decode_lot(_read(get, "lots", id_key(lot_id))) for lot_id in account.open_lot_ids],
                  key=rec.lot_expiry_order)
    account.open_lot_ids = [lot.lot_id for lot in lots]
    account.lots_by_expiry = True


cdef void _open_lot(Ledger self, object get, account, lot) except *:
    """Add `lot` to the account's open lots, in expiry order: a new lot usually expires last
    and goes at the end; one that does not (a shorter own lifetime, a lot opened again) is
    placed by a binary search."""
    open_lot_ids = account.open_lot_ids
    if not account.lots_by_expiry:
        open_lot_ids.append(lot.lot_id)
        return
    key = rec.lot_expiry_order(lot)
    order = lambda lot_id: rec.lot_expiry_order(_decode_lot(_read(get, "lots", id_key(lot_id))))
    cdef Py_ssize_t low = 0, high = len(open_lot_ids), middle
    if high and key > order(open_lot_ids[high - 1]):
        low = high
    while low < high:
        middle = (low + high) // 2
        if order(open_lot_ids[middle]) < key:
            low = middle + 1
        else:
            high = middle
    open_lot_ids.insert(low, lot.lot_id)


def _consume(Ledger self, _Batch batch, account, long long points):
    """Take `points` from ACTIVE lots, earliest expiry first; returns the postings.
    The caller has checked that the lots hold enough."""
    lots = [_decode_lot(batch.get("lots", id_key(lot_id))) for lot_id in account.open_lot_ids]
    lots = [lot for lot in lots if lot.state == LOT_ACTIVE and lot.remaining > 0]
    lots.sort(key=lambda lot: (lot.expires_at_ms == 0, lot.expires_at_ms, lot.lot_id))
    postings = []
    for lot in lots:
        if points == 0:
            break
        take = min(points, lot.remaining)
        lot.remaining -= take
        points -= take
        postings.append(rec.Posting(lot.lot_id, -take))
        batch.put("lots", id_key(lot.lot_id), _encode(lot))
        if lot.remaining == 0:
            account.open_lot_ids.remove(lot.lot_id)
        account.active -= take
    if points:
        raise AssertionError(f"account {account.account_id}: lots short by {points} after the check")
    return postings


cdef long long _repay_debt(Ledger self, _Batch batch, account, lot, list postings) except? -1:
    """New active points pay clawback debt first, so the debt cannot outlive the points that
    covered it (and come back when they expire). Returns the points repaid."""
    cdef long long debt = account.debt
    if debt == 0 or lot.state != LOT_ACTIVE:  # the usual case: no debt, decided on C ints
        return 0
    cdef long long repaid = min(debt, <long long>lot.remaining)
    if repaid <= 0:
        return 0
    lot.remaining -= repaid
    account.active -= repaid
    account.debt -= repaid
    if lot.remaining == 0:
        account.open_lot_ids.remove(lot.lot_id)
    postings.append(rec.Posting(lot.lot_id, -repaid))
    batch.put("lots", id_key(lot.lot_id), _encode(lot))
    return repaid


cdef object _earn(Ledger self, _Batch batch, account, long long txn_id, long long points,
                  long long activates_at_ms, long long expires_at_ms, list postings):
    """Put earned points in a lot: the account's newest lot when it activates and expires at
    the same moments (the same day's purchases), else a new lot with id `txn_id`."""
    cdef int state = LOT_PENDING if activates_at_ms > batch.now_ms else LOT_ACTIVE
    cdef bint same_activation
    last_lot_id = account.last_lot_id
    stored = batch.get("lots", id_key(last_lot_id)) if last_lot_id else None
    if stored is not None:  # (None: none yet, or compaction removed it once it ended)
        lot = _decode_lot(stored)
        # An active lot's activation is past: only its expiry tells lots apart.
        same_activation = state == LOT_ACTIVE or lot.activates_at_ms == activates_at_ms
        if lot.state == state and same_activation and lot.expires_at_ms == expires_at_ms:
            if lot.remaining == 0 and state == LOT_ACTIVE:
                _open_lot(self, batch, account, lot)  # spent to nothing, open again
            lot.amount += points
            lot.remaining += points
            if state == LOT_PENDING:
                account.pending += points
                _schedule(account, activates_at_ms)
            else:
                account.active += points
                _schedule(account, expires_at_ms)
            batch.put("lots", id_key(lot.lot_id), _encode(lot))
            postings.append(_Posting(lot.lot_id, points))
            return lot
    lot = _LotRec(txn_id, account.account_id, points, points, activates_at_ms, expires_at_ms, state)
    _add_lot(self, batch, account, lot)
    account.last_lot_id = txn_id
    postings.append(_Posting(txn_id, points))
    return lot


cdef object _own_lot(Ledger self, _Batch batch, account, long long points, long long activates_at_ms,
                     long long expires_at_ms, list postings):
    """A lot for points with their own activation or lifetime (a campaign's), never shared; its
    id is taken from the transaction ids, so that ids keep growing with time."""
    state = LOT_PENDING if activates_at_ms > batch.now_ms else LOT_ACTIVE
    lot = rec.LotRec(batch.take_id(), account.account_id, points, points, activates_at_ms, expires_at_ms, state)
    _add_lot(self, batch, account, lot)
    postings.append(rec.Posting(lot.lot_id, points))
    return lot


cdef void _add_lot(Ledger self, _Batch batch, account, lot) except *:
    _open_lot(self, batch, account, lot)
    batch.put("lots", id_key(lot.lot_id), _encode(lot))
    if lot.state == LOT_PENDING:
        account.pending += lot.remaining
        _schedule(account, lot.activates_at_ms)
    else:
        account.active += lot.remaining
        _schedule(account, lot.expires_at_ms)


def _sweep(Ledger self, _Batch batch, op):
    """Settle accounts whose lots or holds came due, writing the expiry journal entries."""
    settled = 0
    cursor = batch.txn.cursor(db=batch.dbs["accounts"])
    due = []
    for key, value in cursor:
        account = _decode_account(value)
        if account.next_change_at_ms and account.next_change_at_ms <= batch.now_ms:
            due.append(account)
            if len(due) > op.accounts_max:
                break
    more = len(due) > op.accounts_max
    first_id = batch.next_id
    for account in due[:op.accounts_max]:
        _settle(self, batch, account, batch.now_ms, batch)
        settled += 1
    expired = 0
    for txn_id in range(first_id, batch.next_id):
        expired += _decode_txn(batch.get("journal", id_key(txn_id))).expired
    return Outcome(CODE_OK, body=SweepResult(settled, expired, more))
