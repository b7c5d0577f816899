def _join_group(Ledger self, _Batch batch, op):
    member = _load_account(self, batch, op.account_id)
    parent = _load_account(self, batch, op.parent_account_id)
    if member is None:
        return rejected(Code.NOT_FOUND, f"account_id: no account '{op.account_id}'"), 0
    if parent is None:
        return rejected(Code.NOT_FOUND, f"parent_account_id: no account '{op.parent_account_id}'"), 0
    if member.account_id == parent.account_id:
        return rejected(Code.INVALID_ARGUMENT, "parent_account_id: an account cannot join itself"), 0
    if member.parent_id or member.member_ids or parent.parent_id:
        return rejected(Code.FAILED_PRECONDITION, "account_id: groups are one level deep and an account "
                        "belongs to at most one", Reason.ALREADY_IN_GROUP), 0
    member = _settle(self, batch, member, batch.now_ms, batch)
    if member.active or member.pending or member.held or member.debt:
        return rejected(Code.FAILED_PRECONDITION, f"account_id: '{member.account_id}' holds points, holds or "
                        "debt; a member joins empty", Reason.ACCOUNT_NOT_EMPTY), 0
    member.parent_id = parent.account_id
    parent.member_ids.append(member.account_id)
    return _group_changed(self, batch, op, TXN_JOIN_GROUP, member, parent)


def _leave_group(Ledger self, _Batch batch, op):
    member = _load_account(self, batch, op.account_id)
    if member is None:
        return rejected(Code.NOT_FOUND, f"account_id: no account '{op.account_id}'"), 0
    if not member.parent_id:
        return rejected(Code.FAILED_PRECONDITION, f"account_id: '{member.account_id}' is in no group",
                        Reason.NOT_IN_GROUP), 0
    parent = _load_account(self, batch, member.parent_id)
    parent.member_ids.remove(member.account_id)
    member.parent_id = ""
    return _group_changed(self, batch, op, TXN_LEAVE_GROUP, member, parent)


def _group_changed(Ledger self, _Batch batch, op, kind, member, parent):
    txn_id = batch.take_id()
    _journal(self, batch, rec.TxnRec(txn_id, kind, op.request_id, parent.account_id, batch.now_ms,
                                     member_id=member.account_id), parent, member)
    return Outcome(CODE_OK, body=_account_view(self, batch, member, batch.now_ms, batch)), txn_id
