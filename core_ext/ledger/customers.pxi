cdef tuple _find_account(Ledger self, object get, customer):
    """(account, None) or (None, rejection). `get(db_name, key)` reads in any transaction."""
    account, _, rejection = _find_customer(self, get, customer)
    return account, rejection


cdef tuple _find_customer(Ledger self, object get, customer):
    """(account, card, None) or (None, None, rejection): the presented card's record (None
    without a card) comes from the same read that found the account, not from a second one."""
    ident = None
    cdef int kind = customer.kind
    if kind == ID_ACCOUNT:
        account_id = customer.value
    else:
        stored = _read(get, "idents", ident_key(kind, customer.value))
        if stored is None:
            field = "card" if kind == ID_CARD else "phone"
            return None, None, rejected(Code.NOT_FOUND, f"customer.{field}: no account has {field} '{customer.value}'")
        ident = _decode_ident(stored)
        account_id = ident.account_id
    stored = _read(get, "accounts", account_id.encode())
    if stored is None:
        return None, None, rejected(Code.NOT_FOUND, f"customer.account_id: no account '{account_id}'")
    return _decode_account(stored), ident if kind == ID_CARD else None, None


cdef object _pool(Ledger self, object get, member):
    """The account whose lots a member's operations use: the group's parent, or itself."""
    if not member.parent_id:
        return member
    return _decode_account(_read(get, "accounts", member.parent_id.encode()))


cdef object _load_account(Ledger self, object get, str account_id):
    stored = _read(get, "accounts", account_id.encode())
    return None if stored is None else _decode_account(stored)


cdef void _touch(Ledger self, account, long long now_ms) except *:
    """Record activity: it postpones the inactivity burn."""
    account.last_activity_at_ms = now_ms
    cdef long long burn_ms = self.program.inactivity_burn_ms
    if burn_ms:
        _schedule(account, now_ms + burn_ms)


cdef void _save_account(Ledger self, _Batch batch, account) except *:
    batch.put("accounts", account.account_id.encode(), _encode(account))


cdef object _shopper(Ledger self, member, card, long long now_ms):
    category = "" if card is None else card.category
    blocked = card is not None and card.blocked
    tier, window_spend = "", 0
    if self.program.tracks_activity:
        spend, points = _window(self, member, now_ms)
        window_spend = spend
        if self.program.tier_levels:
            tier = _tier(self, member, now_ms, spend, points)[0]
    return Shopper(category, tier, tuple(member.segments), tuple(member.tags), tuple(member.clubs),
                   member.created_at_ms, member.birthday, member.purchases, member.lifetime_spend_minor,
                   window_spend, blocked)


def _account_view(Ledger self, get, account, long long now_ms, _Batch batch=None):
    """The account as shown (after the caller saved it); its balance is its pool's as a settle
    at `now_ms` would leave it, computed on a copy laid over the read or the write `batch`, so
    that showing an account writes nothing."""
    cards = []
    for card in account.cards:
        ident = _decode_ident(get("idents", ident_key(ID_CARD, card)))
        cards.append(CardInfo(card, ident.category, ident.blocked))
    view = _ReadView(batch.txn, batch.dbs) if batch is not None else get
    pool = _settle(self, view, _pool(self, view, account), now_ms)
    balance = _balance(self, view, pool, now_ms)
    tier, next_tier, missing = _tier(self, account, now_ms) if self.program.tier_levels else ("", "", 0)
    return AccountView(account.account_id, account.phone, tuple(cards), balance,
                       account.created_at_ms, account.lifetime_spend_minor, account.lifetime_earned_points,
                       account.parent_id, tuple(account.member_ids), tuple(account.segments),
                       tuple(account.tags), account.birthday, tuple(account.clubs), account.last_activity_at_ms,
                       tier, next_tier, missing, account.purchases)


def _create_account(Ledger self, _Batch batch, op):
    account_id = op.account_id
    if account_id and batch.get("accounts", account_id.encode()) is not None:
        return rejected(Code.ALREADY_EXISTS, f"account_id: account '{account_id}' exists"), 0
    if op.phone and batch.get("idents", ident_key(ID_PHONE, op.phone)) is not None:
        return rejected(Code.ALREADY_EXISTS, f"phone: phone '{op.phone}' belongs to another account"), 0
    txn_id = batch.take_id()
    if not account_id:
        account_id = f"A{txn_id:010d}"
    account = rec.AccountRec(account_id, op.phone, batch.now_ms)
    _save_account(self, batch, account)
    if op.phone:
        batch.put("idents", ident_key(ID_PHONE, op.phone), _encode(rec.IdentRec(account_id)))
    _journal(self, batch, rec.TxnRec(txn_id, TXN_CREATE_ACCOUNT, op.request_id, account_id, batch.now_ms),
             account)
    return Outcome(CODE_OK, body=_account_view(self, batch, account, batch.now_ms, batch)), txn_id


def _issue_card(Ledger self, _Batch batch, op):
    stored = batch.get("accounts", op.account_id.encode())
    if stored is None:
        return rejected(Code.NOT_FOUND, f"account_id: no account '{op.account_id}'"), 0
    key = ident_key(ID_CARD, op.card)
    owner = batch.get("idents", key)
    if owner is not None:
        return rejected(Code.ALREADY_EXISTS, f"card: card '{op.card}' is already issued"), 0
    account = _decode_account(stored)
    if op.replaces_card:
        old_key = ident_key(ID_CARD, op.replaces_card)
        old = batch.get("idents", old_key)
        if old is None or _decode_ident(old).account_id != account.account_id:
            return rejected(Code.NOT_FOUND,
                            f"replaces_card: account '{account.account_id}' has no card '{op.replaces_card}'"), 0
        old_ident = _decode_ident(old)
        old_ident.blocked = True
        batch.put("idents", old_key, _encode(old_ident))
    txn_id = batch.take_id()
    account.cards.append(op.card)
    _save_account(self, batch, account)
    batch.put("idents", key, _encode(rec.IdentRec(account.account_id, op.category)))
    _journal(self, batch, rec.TxnRec(txn_id, TXN_ISSUE_CARD, op.request_id, account.account_id, batch.now_ms),
             account)
    return Outcome(CODE_OK, body=_account_view(self, batch, account, batch.now_ms, batch)), txn_id


def _block_card(Ledger self, _Batch batch, op):
    key = ident_key(ID_CARD, op.card)
    stored = batch.get("idents", key)
    if stored is None:
        return rejected(Code.NOT_FOUND, f"card: no card '{op.card}'"), 0
    ident = _decode_ident(stored)
    ident.blocked = True
    batch.put("idents", key, _encode(ident))
    txn_id = batch.take_id()
    _journal(self, batch, rec.TxnRec(txn_id, TXN_BLOCK_CARD, op.request_id, ident.account_id, batch.now_ms),
             _load_account(self, batch, ident.account_id))
    return Outcome(CODE_OK, body=CardResult(CardInfo(op.card, ident.category, True))), txn_id


def _set_attributes(Ledger self, _Batch batch, op):
    account, rejection = _find_account(self, batch, op.customer)
    if rejection is not None:
        return rejection, 0
    account.segments = list(op.segments)
    account.tags = list(op.tags)
    account.birthday = op.birthday
    account.clubs = list(op.clubs)
    _save_account(self, batch, account)
    txn_id = batch.take_id()
    _journal(self, batch, rec.TxnRec(txn_id, TXN_SET_ATTRIBUTES, op.request_id, account.account_id,
                                     batch.now_ms), account)
    return Outcome(CODE_OK, body=_account_view(self, batch, account, batch.now_ms, batch)), txn_id
