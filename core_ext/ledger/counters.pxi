cdef dict _counting(Ledger self):
    """Per campaign with ledger-kept limits: its amount caps [(period, cap)] and its uses cap."""
    program = self.program
    if self._counted_program is not program:
        counted = {}
        for campaign_id, (limits, discount) in program.limits.items():
            caps = []
            for period, points_cap, minor_cap in (
                    (b"D", limits.account_day_max_points, limits.account_day_max_minor),
                    (b"W", limits.account_week_max_points, limits.account_week_max_minor),
                    (b"M", limits.account_month_max_points, limits.account_month_max_minor),
                    (b"B", limits.budget_points, limits.budget_minor)):
                cap = minor_cap if discount else points_cap
                if cap:
                    caps.append((period, cap))
            if caps or limits.uses_per_account:
                counted[campaign_id] = (caps, limits.uses_per_account)
        self._counted, self._counted_program = counted, program
    return self._counted


cdef list _amount_keys(Ledger self, str campaign_id, list caps, str account_id, long long now_ms):
    """[(counter key, cap)] of a campaign's amount limits for this account and moment."""
    keys = []
    periods = None
    for period, cap in caps:
        if period == b"B":
            keys.append((b"B:" + campaign_id.encode(), cap))
            continue
        if periods is None:
            periods = dict(zip((b"D", b"W", b"M"), self.program.period_keys(now_ms)))
        keys.append((b"%s%d:%s\0%s" % (period, periods[period], campaign_id.encode(), account_id.encode()), cap))
    return keys


def _use_key(str campaign_id, str account_id):
    return b"U:" + campaign_id.encode() + b"\0" + account_id.encode()


cdef object _counter(object get, bytes key):
    stored = _read(get, "counters", key)
    return 0 if stored is None else int.from_bytes(stored, "big", signed=True)


cdef object _allowance(Ledger self, object get, str account_id, long long now_ms):
    """A function of a campaign id: what its ledger-kept limits have left for this account now
    (None: no such limits). The core asks only about campaigns that apply otherwise."""
    counted = _counting(self)
    if not counted:
        return None

    def allowance(str campaign_id):
        entry = counted.get(campaign_id)
        if entry is None:
            return None
        caps, uses_cap = entry
        if uses_cap and _counter(get, _use_key(campaign_id, account_id)) >= uses_cap:
            return 0
        left = None
        for key, cap in _amount_keys(self, campaign_id, caps, account_id, now_ms):
            remaining = _left(self, get, key, cap)
            left = remaining if left is None else min(left, remaining)
        return left
    return allowance


cdef object _left(Ledger self, get, bytes key, long long cap):
    """What a counter has left under its cap; a shared one's (a budget, a code's total uses)
    is this partition's slice and the bank's rest."""
    spent = _counter(get, key)
    return cap - spent if self.escrow is None else self.escrow.left(key, cap, spent)


cdef void _count(Ledger self, _Batch batch, entry, limited, accepted, str account_id) except *:
    """Add what the campaigns with limits gave, their uses and the promo codes' uses to the
    counters, and record on `entry` how to give each back."""
    counted = _counting(self)
    for campaign_id, amounts in limited:
        if campaign_id not in counted:
            continue
        caps, uses_cap = counted[campaign_id]
        keys = [key for key, _ in _amount_keys(self, campaign_id, caps, account_id, batch.now_ms)]
        given = sum(amounts)
        for key in keys:
            _add_counter(self, batch, entry, key, given)
        entry.limited.append(rec.LimitedUse(campaign_id, list(amounts), keys))
        if uses_cap:
            _add_counter(self, batch, entry, _use_key(campaign_id, account_id), 1)
            entry.use_keys.append(_use_key(campaign_id, account_id))
    for code, record in accepted:
        for key in (b"C:" + code.encode(), b"c:" + code.encode() + b"\0" + account_id.encode()):
            _add_counter(self, batch, entry, key, 1)
            entry.use_keys.append(key)
        entry.promo_codes.append(code)


cdef void _add_counter(Ledger self, _Batch batch, entry, bytes key, long long delta) except *:
    if delta == 0:
        return
    value = _counter(batch, key) + delta
    if self.escrow is not None:
        self.escrow.spend(key, value, delta)  # a shared counter's slice covers it, or raises
    batch.put("counters", key, value.to_bytes(8, "big", signed=True))
    entry.counters.append((key, delta))


def _uncount(Ledger self, _Batch batch, entry, target, dict returns, reversal, bint complete):
    """Give back to the counters what the rolled-back part of `target` consumed: each line's
    share by returned quantity (telescoping, like the points), the uses on a full rollback.
    Nothing goes back to a counter compaction removed (a closed period's, a removed code's)."""
    removed = removed_counters(batch.get)
    for use in target.limited:
        if target.lines:
            given = 0
            for amount, line in zip(use.amounts, target.lines):
                after = reversal.returned_qty.get(line.line_no, 0)
                before = after - returns.get(line.line_no, 0)
                given += amount * after // line.qty_milli - amount * before // line.qty_milli
        else:
            given = sum(use.amounts)
        for key in use.keys:
            if not removed(key):
                _add_counter(self, batch, entry, key, -given)
    if complete:
        for key in target.use_keys:
            if not removed(key):
                _add_counter(self, batch, entry, key, -1)
