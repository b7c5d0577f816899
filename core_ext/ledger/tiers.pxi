cdef tuple _window(Ledger self, account, long long now_ms):
    """(spend, points earned) over the tier window, from the account's activity."""
    program = self.program
    first_day = program.local_day(now_ms) - program.tier_window_days
    spend = points = 0
    for day, day_spend, day_points in account.activity:
        if day > first_day:
            spend += day_spend
            points += day_points
    return spend, points


cdef tuple _tier(Ledger self, account, long long now_ms, spend=None, points=None):
    """(tier, next tier, missing): the level the window's metrics reach, or a granted tier
    that has not run out when it ranks higher."""
    if spend is None:
        spend, points = _window(self, account, now_ms)
    tier, following, missing = self.program.tier_of(spend, points)
    for granted, until_ms, _ in account.tier_grants:
        if until_ms > now_ms and _rank(self, granted) > _rank(self, tier):
            tier = granted
            following, missing = self.program.next_tier_after(tier, spend, points)
    return tier, following, missing


cdef Py_ssize_t _rank(Ledger self, str tier) except? -2:
    """A tier's place in [tiers] file order; -1 for no tier or one the ruleset dropped."""
    for index, level in enumerate(self.program.tier_levels):
        if level.id == tier:
            return index
    return -1


cdef void _grant_tier(Ledger self, account, long long txn_id, calculation, long long now_ms) except *:
    """Record the purchase's grant_tier campaigns on the account: each grant holds its tier
    until it runs out or the purchase is rolled back in full, beside the other grants."""
    grants = [grant for grant in account.tier_grants if grant[1] > now_ms]
    for applied in calculation.campaigns:
        if applied.effect == "grant_tier" and applied.campaign_id in self.program.grants:
            tier, days = self.program.grants[applied.campaign_id]
            grants.append((tier, now_ms + days * MS_PER_DAY, txn_id))
    account.tier_grants = grants


cdef void _record_activity(Ledger self, account, long long at_ms, long long spend, long long points) except *:
    """Add to (or, negative, take from) the tier metrics of the local day of `at_ms`; days
    that left the window are dropped."""
    if not self.program.tracks_activity:
        return
    program = self.program
    day = program.local_day(at_ms)
    # (a purchase records at the group's time: its day is the window's last, not computed twice)
    first_day = (day if at_ms == self._now_ms else program.local_day(self._now_ms)) - program.tier_window_days
    activity = account.activity
    cdef Py_ssize_t newest = len(activity) - 1  # (no negative indexes: the core is built without wraparound)
    if newest >= 0 and activity[newest][0] == day and activity[0][0] > first_day:  # the usual case: today again
        last = activity[newest]
        activity[newest] = (day, last[1] + spend, last[2] + points)
        return
    activity = [entry for entry in activity if entry[0] > first_day]
    for index, (known, day_spend, day_points) in enumerate(activity):
        if known == day:
            activity[index] = (day, day_spend + spend, day_points + points)
            break
    else:
        if day > first_day:
            activity.append((day, spend, points))
    account.activity = activity
