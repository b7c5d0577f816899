def _event(Ledger self, _Batch batch, op):
    now_ms = batch.now_ms
    member, card, rejection = _find_customer(self, batch, op.customer)
    if rejection is not None:
        return rejection, 0
    related = None
    if op.related is not None and not op.related_elsewhere:
        related, rejection = _find_account(self, batch, op.related)
        if rejection is not None:
            return rejected(rejection.code, "related." + rejection.message.split(".", 1)[1]), 0
        if related.account_id == member.account_id:
            return rejected(Code.INVALID_ARGUMENT, "related: the related customer is the event's customer"), 0
    account = _settle(self, batch, _pool(self, batch, member), now_ms, batch)
    self._now_ms = now_ms
    shopper = _shopper(self, member, card, now_ms)
    allowances = _allowance(self, batch, member.account_id, now_ms) if self.program.limits else None
    result = self.program.evaluate_event(op.event_type, dict(op.attributes), op.amount_minor, now_ms, shopper,
                                         allowances, op.related is not None)
    if result.points == 0 and result.related_points == 0:
        body = EventResult(0, member.account_id, 0, 0, "", 0, result.campaigns,
                           _balance(self, batch, account, now_ms))
        return Outcome(CODE_OK, body=body), 0
    pooled = member.account_id != account.account_id
    txn_id = batch.take_id()
    entry = rec.TxnRec(txn_id, TXN_EVENT, op.request_id, account.account_id, now_ms, earned=result.points,
                       ruleset_version=result.ruleset_version, reason=op.event_type,
                       member_id=member.account_id if pooled else "")
    # Each entry counts its own points, so that rolling back either gives back its own share.
    # A related customer in another partition: both shares are counted here, with the event.
    _count(self, batch, entry, [(cid, amounts if op.related_elsewhere else amounts[:1])
                                for cid, amounts in result.limited], (), member.account_id)
    member = _credit_event(self, batch, entry, account, member, result.points, result)
    related_txn_id = 0
    if result.related_points and op.related_elsewhere:
        _outbox_related(self, batch, op, result)
    elif result.related_points:
        related_txn_id = _related_event(self, batch, op, related, result, entry)
    if related_txn_id:  # the related customer may share the pool: show it as it is now
        account = _load_account(self, batch, account.account_id)
    related_id = op.related.value if op.related_elsewhere else related.account_id if related else ""
    body = EventResult(txn_id, member.account_id, result.points, related_txn_id, related_id,
                       result.related_points, result.campaigns, _balance(self, batch, account, now_ms))
    return Outcome(CODE_OK, body=body), txn_id


def _related_event(Ledger self, _Batch batch, op, related, result, shared):
    """The related customer's share of an event (a referrer's points): an entry of its own,
    counted in the same counters as the event's entry `shared`."""
    now_ms = batch.now_ms
    related = _load_account(self, batch, related.account_id)  # the event's entry may have saved it
    account = _settle(self, batch, _pool(self, batch, related), now_ms, batch)
    pooled = related.account_id != account.account_id
    txn_id = batch.take_id()
    entry = rec.TxnRec(txn_id, TXN_EVENT, op.request_id, account.account_id, now_ms,
                       earned=result.related_points, ruleset_version=result.ruleset_version,
                       reason=f"{op.event_type} (related)", member_id=related.account_id if pooled else "")
    keys = {use.campaign_id: use.keys for use in shared.limited}
    for campaign_id, amounts in result.limited:
        if campaign_id in keys:
            for key in keys[campaign_id]:
                _add_counter(self, batch, entry, key, amounts[1])
            entry.limited.append(rec.LimitedUse(campaign_id, [amounts[1]], keys[campaign_id]))
    _credit_event(self, batch, entry, account, related, result.related_points, result)
    return txn_id


def _credit_event(Ledger self, _Batch batch, entry, account, member, long long points, result):
    """Earn an event entry's `points` into `account`, the pool of `member` who made it; count
    them as the member's activity and journal the entry. Returns the member as saved."""
    now_ms = batch.now_ms
    if points:
        entry.new_lot = _earn(self, batch, account, entry.txn_id, points, result.activate_at_ms,
                              result.expire_at_ms, entry.postings)
        entry.debt_delta = -_repay_debt(self, batch, account, entry.new_lot, entry.postings)
    _touch(self, account, now_ms)
    if member.account_id != account.account_id:
        member = _load_account(self, batch, member.account_id)
        _touch(self, member, now_ms)
    else:
        member = account
    member.lifetime_earned_points += points
    _record_activity(self, member, now_ms, 0, points)
    entry.activity_counted = self.program.tracks_activity
    _journal(self, batch, entry, account, member)
    return member


# -- Partitions: the related customer in another partition (core_ext/outbox.py) ----------------


def _outbox_related(Ledger self, _Batch batch, op, result):
    """The related customer's share, to relay to its partition: written with the event."""
    record = OutboxRec(OutboxState.PENDING, op.related.value, result.related_points, op.event_type,
                       result.ruleset_version, result.activate_at_ms, result.expire_at_ms, op.actor)
    batch.put("outbox", work_key(op.request_id), encode_outbox(record))


def _related_credit(Ledger self, _Batch batch, op):
    """The relayed share of an event made in another partition: an entry like `_related_event`'s."""
    related = _load_account(self, batch.get, op.account_id)
    if related is None:
        return rejected(Code.NOT_FOUND, f"account_id: no account '{op.account_id}'"), 0
    account = _settle(self, batch.get, _pool(self, batch.get, related), batch.now_ms, batch)
    pooled = related.account_id != account.account_id
    txn_id = batch.take_id()
    entry = rec.TxnRec(txn_id, TXN_EVENT, op.request_id, account.account_id, batch.now_ms, earned=op.points,
                       ruleset_version=op.ruleset_version, reason=f"{op.event_type} (related)",
                       member_id=related.account_id if pooled else "")
    related = _credit_event(self, batch, entry, account, related, op.points, op)
    body = EventResult(txn_id, related.account_id, op.points, 0, "", 0, (),
                       _balance(self, batch.get, account, batch.now_ms))
    return Outcome(CODE_OK, body=body), txn_id


def _outbox_reversed(Ledger self, _Batch batch, target):
    """A rolled-back event whose related share went to the outbox: the relay rolls that back too."""
    found = reversed_record(lambda key: batch.get("outbox", key), target.request_id)
    if found is not None:
        batch.put("outbox", found[0], found[1])
