def _set_rules(Ledger self, _Batch batch, op):
    """Store a validated ruleset for every worker; this one serves it once the group commits."""
    program = Program(parse_program(dict(op.sources)))
    batch.put("meta", RULESET_KEY, _encode((program.version, dict(op.sources))))
    if op.files:
        batch.put("meta", RULE_FILES_KEY, program.version.encode())
    self._switched = program
    return Outcome(CODE_OK)


def _follow_ruleset(Ledger self, stored):
    """Serve the ruleset another worker stored, when it differs from ours."""
    if stored is None:
        return False
    if _decode_ruleset_version(stored)[0] == self.program.version:  # every group: the sources stay raw
        return False
    version, sources = _decode_ruleset(stored)
    self.program = Program(parse_program(sources))
    return True


cdef tuple _evaluate(Ledger self, object get, member, card, receipt, long long now_ms, long long available,
                    long long redeem_points, bint explain=False, long long captured_points=0):
    """The program's result for this customer (`card`: the one presented, or None) and ledger
    state, and the promo codes accepted. `captured_points`: of the holds the purchase captures."""
    program = self.program
    shopper = _shopper(self, member, card, now_ms)
    allowances = _allowance(self, get, member.account_id, now_ms) if program.limits else None
    statuses, unlocked = ((), None)
    if receipt.promo_codes:
        statuses, unlocked = _promo_statuses(self, get, receipt.promo_codes, member.account_id, now_ms)
    calculation = program.calculate(receipt, now_ms, available, redeem_points, shopper, allowances,
                                    unlocked, explain, captured_points)
    accepted = []
    if statuses:
        applied = {campaign.campaign_id for campaign in calculation.campaigns}
        results = []
        for code, record, refusal in statuses:
            if not refusal and (record.campaign_id not in applied
                                or any(record.campaign_id == other.campaign_id for _, other in accepted)):
                refusal = "not_applicable"
            if not refusal:
                accepted.append((code, record))
            results.append(PromoCodeResult(code, not refusal, refusal))
        calculation = _replace(calculation, promo_codes=tuple(results))
    return calculation, accepted
