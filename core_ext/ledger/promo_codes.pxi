cdef tuple _promo_statuses(Ledger self, object get, codes, str account_id, long long now_ms):
    """[(code, record, refusal or "")] for the presented codes, and the campaigns they unlock."""
    statuses, unlocked = [], set()
    for code in codes:
        stored = _read(get, "codes", code.encode())
        record = None if stored is None else _decode_promo_code(stored)
        if record is None:
            refusal = "unknown"
        elif record.valid_from_ms and now_ms < record.valid_from_ms:
            refusal = "not_yet_valid"
        elif record.valid_to_ms and now_ms >= record.valid_to_ms:
            refusal = "expired"
        elif record.uses_total and _left(self, get, b"C:" + code.encode(), record.uses_total) <= 0:
            refusal = "exhausted"
        elif record.uses_per_account and \
                _counter(get, b"c:" + code.encode() + b"\0" + account_id.encode()) >= record.uses_per_account:
            refusal = "limit_per_account"
        else:
            refusal = ""
            unlocked.add(record.campaign_id)
        statuses.append((code, record, refusal))
    return statuses, unlocked


def _promo_codes(Ledger self, _Batch batch, op):
    campaign = next((c for c in self.program.spec.campaigns if c.id == op.campaign_id), None)
    if campaign is None:
        return rejected(Code.FAILED_PRECONDITION, f"campaign_id: no campaign '{op.campaign_id}' in ruleset "
                        f"{self.program.version}", Reason.UNKNOWN_CAMPAIGN), 0
    if not campaign.promo_code:
        return rejected(Code.FAILED_PRECONDITION, f"campaign_id: campaign '{op.campaign_id}' takes no promo "
                        f"codes (its promo_code is false)", Reason.UNKNOWN_CAMPAIGN), 0
    if op.valid_from_ms and op.valid_to_ms and op.valid_from_ms >= op.valid_to_ms:
        return rejected(Code.INVALID_ARGUMENT, "valid_to: must be after valid_from"), 0
    taken = lambda code: batch.get("codes", code.encode()) is not None
    try:
        if op.pattern:
            pattern = parse_pattern(op.pattern, op.charset)
            # A seed carried by the op draws the same codes on every replica that applies it.
            rng = random.Random(op.seed) if op.seed else None
            codes = generate(pattern, op.count, taken, rng, taken_count=_codes_of(batch, pattern, op.count))
        else:
            seen = set()
            for index, code in enumerate(op.codes):
                check_code(code, f"codes[{index}]")
                if code in seen:
                    return rejected(Code.INVALID_ARGUMENT, f"codes[{index}]: '{code}' given twice"), 0
                if taken(code):
                    return rejected(Code.ALREADY_EXISTS, f"codes[{index}]: code '{code}' exists"), 0
                seen.add(code)
            codes = list(op.codes)
    except PatternError as error:
        return rejected(Code.INVALID_ARGUMENT, str(error)), 0
    record = _encode(rec.PromoCodeRec(op.campaign_id, op.valid_from_ms, op.valid_to_ms, op.uses_total,
                                      op.uses_per_account))
    for code in codes:
        batch.put("codes", code.encode(), record)
    return Outcome(CODE_OK, body=PromoCodesResult(op.campaign_id, tuple(codes))), 0


def _codes_of(_Batch batch, pattern, long long count):
    """How many of `pattern`'s codes exist, so that a request takes at most half of what it
    can still yield: counted over the codes that begin with its literal head. Not counted (0)
    when the pattern is so large beside every code there is that even if all of them were its
    own the request would fit and random draws would still mostly find free codes."""
    codes_db = batch.dbs["codes"]
    every = batch.txn.stat(codes_db)["entries"]
    if 2 * every <= pattern.capacity and allowed_count(pattern, every) >= count:
        return 0
    head = pattern.head.encode()
    cursor = batch.txn.cursor(db=codes_db)
    found = 0
    if cursor.set_range(head):
        for key in cursor.iternext(keys=True, values=False):
            if not key.startswith(head):
                break
            found += pattern.matches(key.decode(errors="replace"))
    return found
