# cython: language_level=3
"""The rule engine: a loyalty program compiled into C arrays, evaluated one whole receipt at a time.

`Program(spec)` compiles a validated `ProgramSpec` once per ruleset version; `Program.calculate`
takes a whole receipt and returns a whole `Calculation`. The evaluation loops touch only C structs:
campaign filters are hashed and sorted at compile time, and every rate is integer arithmetic on
minor units with a 128-bit intermediate product and the program's explicit rounding mode.
"""

from libc.stdint cimport int64_t, uint64_t
from libc.stdlib cimport calloc, free, qsort
from libc.string cimport memcmp

import datetime as dt
import zoneinfo

from kassa.core_ext.model import AppliedCampaign, Calculation, CampaignExplain, EventCalculation, LineResult, NO_SHOPPER
from kassa.core_ext import limits
from kassa.core_ext.program import DISCOUNT_EFFECTS, Limits, kept_by_ledger

# Read once from core_ext/limits.py, the one place they are defined, into C globals for the loops.
cdef int64_t BPS_PER_UNIT = limits.BPS_PER_UNIT
cdef int64_t MS_PER_DAY = limits.MS_PER_DAY
cdef Py_ssize_t LINES_PER_RECEIPT_MAX = limits.LINES_PER_RECEIPT_MAX
cdef Py_ssize_t CAMPAIGNS_PER_PROGRAM_MAX = limits.CAMPAIGNS_PER_PROGRAM_MAX

_NO_LIMITS = Limits()
EPOCH_DATE = dt.date(1970, 1, 1)
NO_VALUES = (b"",) * 8  # a program that asks for no receipt or customer value
EPOCH_DATETIME = dt.datetime(1970, 1, 1)

cdef extern from *:
    """
    #include <stdint.h>
    /* a * b / c with a 128-bit product; *remainder gets the remainder. c > 0, a, b >= 0. */
    static inline int64_t kassa_muldiv(int64_t a, int64_t b, int64_t c, int64_t *remainder) {
        __int128 product = (__int128)a * (__int128)b;
        *remainder = (int64_t)(product % c);
        return (int64_t)(product / c);
    }
    """
    int64_t kassa_muldiv(int64_t a, int64_t b, int64_t c, int64_t *remainder) nogil


# ---------------------------------------------------------------------------------------------
# Compiled representation

cdef enum EffectKind:
    EARN_PERCENT = 1
    EARN_FIXED = 2
    EARN_PER_STEP = 3
    EARN_MULTIPLIER = 4
    DISCOUNT_PERCENT = 5
    DISCOUNT_FIXED = 6
    FIXED_PRICE = 7
    BUY_X_GET_Y = 8
    BUNDLE = 9
    REDEEM_SHARE = 10         # no amount: sets the receipt's redeemable share
    GRANT_TIER = 11           # no amount: the ledger grants a tier

cdef enum Per:
    PER_RECEIPT = 0
    PER_LINE = 1
    PER_UNIT = 2

cdef enum Stacking:
    STACK = 0
    EXCLUSIVE = 1
    BEST = 2

cdef enum Rounding:
    ROUND_FLOOR = 0
    ROUND_HALF_UP = 1
    ROUND_CEIL = 2

# Sets of strings a campaign may name; one hashed table, a sorted range per campaign and set.
cdef enum:  # SetKind
    SET_STORE = 0
    SET_REGION = 1
    SET_CHANNEL = 2
    SET_TERMINAL = 3
    SET_PAYMENT = 4
    SET_CARD_CATEGORY = 5
    SET_TIER = 6
    SET_SEGMENT = 7
    SET_TAG = 8
    SET_CLUB = 9
    SET_SKU = 10
    SET_BRAND = 11
    SET_KINDS = 12

# Lists of prefixes: a range of the prefix table per campaign and list.
cdef enum:  # PrefixKind
    PREFIX_CATEGORY = 0
    PREFIX_EXCLUDE = 1
    PREFIX_CARD_BIN = 2
    PREFIX_KINDS = 3

# Why a campaign did not apply (0: it did). Explained by REASONS.
cdef enum Reason:
    APPLIES = 0
    R_NOT_YET = 1
    R_ENDED = 2
    R_PROMO = 3
    R_EXHAUSTED = 4
    R_STORE = 5
    R_REGION = 6
    R_CHANNEL = 7
    R_TERMINAL = 8
    R_PAYMENT = 9
    R_CARD_CATEGORY = 10
    R_TIER = 11
    R_SEGMENT = 12
    R_TAG = 13
    R_CLUB = 14
    R_CARD_BIN = 15
    R_WEEKDAY = 16
    R_HOUR = 17
    R_TOTAL = 18
    R_ACCOUNT_AGE = 19
    R_BIRTHDAY = 20
    R_NTH = 21
    R_SPEND = 22
    R_NO_LINE = 23
    R_ITEM_QTY = 24
    R_STOPPED = 25
    R_LOST_BEST = 26
    R_WINDOW_SPEND = 27
    R_NO_BUNDLE = 28
    R_TIED_BEST = 29
    R_CARD_BLOCKED = 30

REASONS = {
    R_NOT_YET: "not valid yet (valid_from)", R_ENDED: "ended (valid_to)",
    R_PROMO: "needs an accepted promo code", R_EXHAUSTED: "its limits have nothing left",
    R_STORE: "when.stores", R_REGION: "when.regions", R_CHANNEL: "when.channels",
    R_TERMINAL: "when.terminals", R_PAYMENT: "when.payment_methods",
    R_CARD_CATEGORY: "when.card_categories", R_TIER: "when.tiers", R_SEGMENT: "when.segments",
    R_TAG: "when.tags", R_CLUB: "when.clubs", R_CARD_BIN: "when.card_bins", R_WEEKDAY: "when.weekdays",
    R_HOUR: "when.hour_from/hour_to", R_TOTAL: "when.receipt_total_min_minor",
    R_ACCOUNT_AGE: "when.account_age_days_min", R_BIRTHDAY: "when.birthday_within_days",
    R_NTH: "when.nth_purchase", R_SPEND: "when.lifetime_spend_min_minor",
    R_NO_LINE: "no line matches its line conditions", R_ITEM_QTY: "when.item_qty_min_milli",
    R_WINDOW_SPEND: "when.window_spend_min_minor", R_NO_BUNDLE: "no complete bundle",
    R_CARD_BLOCKED: "the card is blocked and the program's blocked_card_earns is false: it gives no points",
}
NO_POINTS_CARD_BLOCKED = "card_blocked"  # Calculation.no_points_reason
SET_FIELDS = ("stores", "regions", "channels", "terminals", "payment_methods", "card_categories", "tiers",
              "segments", "tags", "clubs", "skus", "brands")
PREFIX_FIELDS = ("category_prefixes", "exclude_category_prefixes", "card_bins")
EFFECT_KINDS = {
    "earn_percent": EARN_PERCENT, "earn_fixed": EARN_FIXED, "earn_per_step": EARN_PER_STEP,
    "earn_multiplier": EARN_MULTIPLIER, "discount_percent": DISCOUNT_PERCENT,
    "discount_fixed": DISCOUNT_FIXED, "fixed_price": FIXED_PRICE, "buy_x_get_y": BUY_X_GET_Y,
    "bundle": BUNDLE, "redeem_share": REDEEM_SHARE, "grant_tier": GRANT_TIER,
}
KIND_NAMES = {number: name for name, number in EFFECT_KINDS.items()}
PERS = {"receipt": PER_RECEIPT, "line": PER_LINE, "unit": PER_UNIT}
STACKINGS = {"stack": STACK, "exclusive": EXCLUSIVE, "best": BEST}
ROUNDINGS = {"floor": ROUND_FLOOR, "half_up": ROUND_HALF_UP, "ceil": ROUND_CEIL}
DEF MS_PER_HOUR = 3_600_000  # milliseconds
DEF OFFSET_BUCKET_MS = 900_000  # time zone offsets change on quarter hours (UTC): cache per bucket
DEF NO_CAP = -1

cdef struct Range:
    int first
    int count

cdef struct CampaignC:
    int kind
    int per
    int stacking
    int best_group            # index of its best_group name
    bint discount             # a discount effect (money), else points
    bint promo                # needs an accepted promo code
    bint counted              # has ledger-kept limits: the ledger passes what is left
    bint recorded             # has any limit: its per-line amounts are reported for the counters
    int64_t bps
    int64_t points
    int64_t step_minor
    int64_t multiplier_bps
    int64_t amount_minor
    int64_t price_minor
    int64_t buy
    int64_t get
    int64_t receipt_cap       # NO_CAP: none
    int64_t valid_from_ms     # 0: open
    int64_t valid_to_ms       # 0: open
    int64_t total_min_minor
    int64_t item_qty_min_milli
    int64_t line_qty_min_milli
    int64_t line_amount_min_minor
    int64_t account_age_min_ms
    int64_t lifetime_spend_min_minor
    int64_t window_spend_min_minor
    int64_t nth_purchase      # 0: any
    int birthday_days         # -1: no condition
    int weekday_mask          # bit d for weekday d (1..7); 0: any
    int hour_from
    int hour_to
    bint line_filter          # category_prefixes or skus set
    Range sets[12]            # SET_KINDS
    Range prefixes[3]         # PREFIX_KINDS

cdef struct StringRef:
    uint64_t hash
    int offset                # into the string blob
    int length

cdef struct LineC:
    int64_t amount
    int64_t qty
    int64_t price
    int64_t discount
    int64_t earned
    int64_t base_earned       # earned before the multipliers
    int64_t redeemed
    int64_t captured          # of the holds the purchase captures
    uint64_t sku_hash
    uint64_t brand_hash
    const char *sku
    Py_ssize_t sku_length
    const char *brand
    Py_ssize_t brand_length
    const char *category
    Py_ssize_t category_length
    bint no_earn
    bint no_discount

# The receipt's and the customer's values, hashed once per evaluation.
cdef struct ValueC:
    uint64_t hash
    const char *data
    Py_ssize_t length

cdef struct ContextC:
    int64_t now_ms
    int64_t total
    ValueC values[7]          # store, region, channel, terminal, payment, card category, tier
    const char *card_bin
    Py_ssize_t card_bin_length
    int weekday               # local, 1..7; 0: not computed
    int hour
    int64_t local_day         # days since 1970-01-01, local
    int64_t created_at_ms
    int64_t purchases
    int64_t lifetime_spend_minor
    int64_t window_spend_minor
    int birthday_distance     # days from the local date to the birthday; -1: no birthday
    bint no_points            # a blocked card under blocked_card_earns = false: nothing gives points

cdef struct Share:
    int64_t remainder
    int index

cdef inline uint64_t fnv1a(const char *data, Py_ssize_t length) noexcept nogil:
    cdef uint64_t h = 14695981039346656037ULL
    cdef Py_ssize_t i
    for i in range(length):
        h ^= <unsigned char>data[i]
        h *= 1099511628211ULL
    return h


cdef int compare_string_ref(const void *a, const void *b) noexcept nogil:
    cdef uint64_t x = (<StringRef *>a).hash
    cdef uint64_t y = (<StringRef *>b).hash
    return (x > y) - (x < y)


cdef int compare_share(const void *a, const void *b) noexcept nogil:
    # larger remainder first, then lower line index: deterministic largest-remainder rounding
    cdef const Share *x = <const Share *>a
    cdef const Share *y = <const Share *>b
    if x.remainder != y.remainder:
        return -1 if x.remainder > y.remainder else 1
    return x.index - y.index


cdef inline int64_t apply_rate(int64_t amount, int64_t bps, int rounding) noexcept nogil:
    cdef int64_t remainder
    cdef int64_t result = kassa_muldiv(amount, bps, BPS_PER_UNIT, &remainder)
    if rounding == ROUND_HALF_UP and 2 * remainder >= BPS_PER_UNIT:
        result += 1
    elif rounding == ROUND_CEIL and remainder > 0:
        result += 1
    return result


cdef int prorate(int64_t total, const int64_t *weights, int64_t *out, int count) noexcept nogil:
    """Split `total` over `count` parts in proportion to `weights` (largest remainder, exact sum).
    Equal parts when every weight is zero. Returns -1 when out of memory."""
    cdef int64_t weight_sum = 0
    cdef int64_t given = 0
    cdef int i
    for i in range(count):
        weight_sum += weights[i]
    cdef Share *shares = <Share *>calloc(count, sizeof(Share))
    if shares == NULL:
        return -1
    for i in range(count):
        if weight_sum > 0:
            out[i] = kassa_muldiv(total, weights[i], weight_sum, &shares[i].remainder)
        else:
            out[i] = kassa_muldiv(total, 1, count, &shares[i].remainder)
        shares[i].index = i
        given += out[i]
    qsort(shares, count, sizeof(Share), compare_share)
    for i in range(<int>(total - given)):
        out[shares[i].index] += 1
    free(shares)
    return 0


def prorate_points(int64_t total, weights):
    """Split `total` over parts in proportion to `weights` (largest remainder; exact sum)."""
    cdef int count = len(weights), i
    if count == 0:
        return []
    cdef int64_t *c_weights = <int64_t *>calloc(count, sizeof(int64_t))
    cdef int64_t *out = <int64_t *>calloc(count, sizeof(int64_t))
    try:
        if c_weights == NULL or out == NULL or total < 0:
            raise MemoryError() if total >= 0 else ValueError("total must be >= 0")
        for i in range(count):
            c_weights[i] = weights[i]
        if prorate(total, c_weights, out, count) < 0:
            raise MemoryError()
        return [out[i] for i in range(count)]
    finally:
        free(c_weights)
        free(out)


cdef inline int64_t day_end_ms(int64_t at_ms) noexcept:
    """The next UTC midnight at or after `at_ms`."""
    return ((at_ms + MS_PER_DAY - 1) // MS_PER_DAY) * MS_PER_DAY


def to_ms(value):
    return 0 if value is None else int(value.timestamp() * 1000)


cdef int compare_cheapest(const void *a, const void *b) noexcept nogil:
    # lower unit price first, then lower line index: which units buy_x_get_y gives away
    cdef const Share *x = <const Share *>a
    cdef const Share *y = <const Share *>b
    if x.remainder != y.remainder:
        return -1 if x.remainder < y.remainder else 1
    return x.index - y.index


cdef inline bint in_hours(int hour_from, int hour_to, int hour) noexcept nogil:
    """`hour` in [hour_from, hour_to); hour_from > hour_to wraps past midnight."""
    if hour_from < hour_to:
        return hour_from <= hour < hour_to
    return hour >= hour_from or hour < hour_to


cdef inline bint is_discount(int kind) noexcept nogil:
    return DISCOUNT_PERCENT <= kind <= BUNDLE


cdef inline bint gives_points(int kind) noexcept nogil:
    """Whether a campaign of `kind` gives points or a tier: what a blocked card that earns nothing
    does not get."""
    return kind <= EARN_MULTIPLIER or kind == GRANT_TIER


cdef inline int pass_of(int kind) noexcept nogil:
    """Which pass applies a campaign: discounts, earn, multipliers, then those with no amount."""
    if is_discount(kind):
        return 0
    if kind == EARN_MULTIPLIER:
        return 2
    return 3 if kind >= REDEEM_SHARE else 1


def _birthday_distance(str birthday, object local_date):
    """Days between `local_date` and the nearest birthday ("MM-DD") in the year before, of, or
    after it; -1 without a birthday. A 29 February birthday falls on 28 February in other years."""
    if not birthday:
        return -1
    month, day = int(birthday[:2]), int(birthday[3:5])
    best = 366
    for year in (local_date.year - 1, local_date.year, local_date.year + 1):
        try:
            date = dt.date(year, month, day)
        except ValueError:
            date = dt.date(year, month, 28)
        best = min(best, abs((date - local_date).days))
    return best


cdef class Program:
    """A compiled loyalty program. Immutable once built; swap the object to change rules."""

    cdef CampaignC *campaigns
    cdef int campaign_count
    cdef StringRef *strings
    cdef StringRef *prefix_table
    cdef bytes blob
    cdef int rounding
    cdef bint needs_local_time
    cdef bint needs_birthday
    cdef bint needs_values            # some campaign asks for a receipt's or customer's value
    cdef bint needs_brands
    cdef object zone
    cdef int64_t offset_bucket
    cdef int64_t offset_ms
    cdef int64_t period_day            # the local day `period_keys_of_day` is of
    cdef tuple period_keys_of_day
    cdef readonly object spec
    cdef readonly list campaign_ids
    cdef readonly list event_campaigns
    cdef readonly list tier_levels
    cdef readonly int64_t tier_window_days
    cdef readonly str version
    cdef readonly int64_t max_redeem_share_bps
    cdef readonly int64_t activation_delay_ms
    cdef readonly int64_t lifetime_ms
    cdef readonly bint clawback_clamp
    cdef readonly bint blocked_card_earns
    cdef readonly int64_t inactivity_burn_ms
    cdef readonly dict limits          # campaign id -> (Limits, is a discount), for campaigns with limits
    cdef readonly dict grants          # grant_tier campaign id -> (tier, days)
    cdef dict own_lots                 # campaign id -> (activation delay ms or None, lifetime ms or None)
    cdef readonly bint tracks_activity # tiers or window spend: the ledger keeps spend per local day

    def __cinit__(self, spec):
        ordered = sorted(spec.campaigns, key=lambda c: -c.priority)  # stable: file order breaks ties
        campaigns = [c for c in ordered if c.trigger == "purchase"]
        if len(ordered) > CAMPAIGNS_PER_PROGRAM_MAX:
            raise ValueError(f"{len(ordered)} campaigns, more than {CAMPAIGNS_PER_PROGRAM_MAX}")
        self.spec = spec
        self.version = spec.version
        self.campaign_ids = [c.id for c in campaigns]
        self.event_campaigns = [c for c in ordered if c.trigger == "event"]
        self.tier_levels = list(spec.tiers.levels)
        self.tier_window_days = spec.tiers.window_days
        settings = spec.settings
        self.zone = zoneinfo.ZoneInfo(settings.timezone)
        self.offset_bucket = -1
        self.period_day = -1
        self.rounding = ROUNDINGS[settings.rounding]
        self.max_redeem_share_bps = settings.max_redeem_share_bps
        self.activation_delay_ms = settings.activation_delay_days * MS_PER_DAY
        self.lifetime_ms = settings.points_lifetime_days * MS_PER_DAY
        self.clawback_clamp = settings.clawback == "clamp"
        self.blocked_card_earns = settings.blocked_card_earns
        self.inactivity_burn_ms = settings.inactivity_burn_days * MS_PER_DAY
        self.limits = {c.id: (c.limits, c.effect.kind in DISCOUNT_EFFECTS) for c in ordered
                       if c.limits != _NO_LIMITS}
        self.grants = {c.id: (c.effect.tier, c.effect.tier_days) for c in campaigns if c.effect.kind == "grant_tier"}
        self.own_lots = {
            c.id: (None if c.effect.activation_delay_days is None else c.effect.activation_delay_days * MS_PER_DAY,
                   None if c.effect.points_lifetime_days is None else c.effect.points_lifetime_days * MS_PER_DAY)
            for c in campaigns
            if c.effect.activation_delay_days is not None or c.effect.points_lifetime_days is not None}
        self.tracks_activity = bool(self.tier_levels) or any(c.when.window_spend_min_minor for c in ordered)
        self._compile(campaigns)

    cdef _compile(self, list campaigns):
        strings, prefixes, groups = [], [], {}
        blob = bytearray()
        self.campaign_count = len(campaigns)
        self.campaigns = <CampaignC *>calloc(max(1, len(campaigns)), sizeof(CampaignC))
        if self.campaigns == NULL:
            raise MemoryError()
        cdef CampaignC *c
        cdef int s
        for index, campaign in enumerate(campaigns):
            c = &self.campaigns[index]
            effect, when, limits = campaign.effect, campaign.when, campaign.limits
            c.kind = EFFECT_KINDS[effect.kind]
            c.per = PERS[effect.per]
            c.stacking = STACKINGS[campaign.stacking]
            c.best_group = groups.setdefault(campaign.best_group, len(groups))
            c.discount = is_discount(c.kind)
            c.promo = campaign.promo_code
            c.recorded = campaign.id in self.limits
            c.counted = kept_by_ledger(limits)
            c.bps = effect.percent_bps
            c.points = effect.points
            c.step_minor = effect.step_minor
            c.multiplier_bps = effect.multiplier_bps
            c.amount_minor = effect.amount_minor
            c.price_minor = effect.price_minor
            c.buy = effect.buy
            c.get = effect.get
            cap = limits.receipt_max_minor if c.discount else limits.receipt_max_points
            c.receipt_cap = cap if cap else NO_CAP
            c.valid_from_ms = to_ms(campaign.valid_from)
            c.valid_to_ms = to_ms(campaign.valid_to)
            c.total_min_minor = when.receipt_total_min_minor
            c.item_qty_min_milli = when.item_qty_min_milli
            c.line_qty_min_milli = when.line_qty_min_milli
            c.line_amount_min_minor = when.line_amount_min_minor
            c.account_age_min_ms = when.account_age_days_min * MS_PER_DAY
            c.lifetime_spend_min_minor = when.lifetime_spend_min_minor
            c.window_spend_min_minor = when.window_spend_min_minor
            c.nth_purchase = when.nth_purchase
            c.birthday_days = -1 if when.birthday_within_days is None else when.birthday_within_days
            c.weekday_mask = 0
            for weekday in when.weekdays:
                c.weekday_mask |= 1 << weekday
            c.hour_from, c.hour_to = when.hour_from, when.hour_to
            c.line_filter = bool(when.category_prefixes or when.skus)
            if c.weekday_mask or c.hour_from != 0 or c.hour_to != 24 or c.birthday_days >= 0:
                self.needs_local_time = True
            if c.birthday_days >= 0:
                self.needs_birthday = True
            if when.stores or when.regions or when.channels or when.terminals or when.payment_methods or \
                    when.card_categories or when.tiers or when.card_bins:
                self.needs_values = True
            if when.brands:
                self.needs_brands = True
            for s, field in enumerate(SET_FIELDS):
                values = sorted(set(getattr(when, field)))
                c.sets[s].first, c.sets[s].count = len(strings), len(values)
                strings.extend(values)
            for s, field in enumerate(PREFIX_FIELDS):
                values = list(getattr(when, field))
                c.prefixes[s].first, c.prefixes[s].count = len(prefixes), len(values)
                prefixes.extend(values)
        self.strings = self._string_table(strings, blob)
        self.prefix_table = self._string_table(prefixes, blob)
        for index in range(self.campaign_count):
            c = &self.campaigns[index]
            for s in range(SET_KINDS):
                qsort(&self.strings[c.sets[s].first], c.sets[s].count, sizeof(StringRef), compare_string_ref)
        self.blob = bytes(blob)

    cdef StringRef *_string_table(self, list strings, bytearray blob) except NULL:
        cdef StringRef *table = <StringRef *>calloc(max(1, len(strings)), sizeof(StringRef))
        if table == NULL:
            raise MemoryError()
        for index, text in enumerate(strings):
            data = text.encode()
            table[index].offset = len(blob)
            table[index].length = len(data)
            table[index].hash = fnv1a(data, len(data))
            blob.extend(data)
        return table

    def __dealloc__(self):
        free(self.campaigns)
        free(self.strings)
        free(self.prefix_table)

    # -----------------------------------------------------------------------------------------
    # Time in the program's zone

    cdef int64_t _local_ms(self, int64_t now_ms) except? -1:
        """`now_ms` on the program's local clock (ms since the local 1970-01-01)."""
        cdef int64_t bucket = now_ms // OFFSET_BUCKET_MS
        if bucket != self.offset_bucket:
            moment = dt.datetime.fromtimestamp(bucket * (OFFSET_BUCKET_MS // 1000), self.zone)
            self.offset_ms = moment.utcoffset() // dt.timedelta(milliseconds=1)
            self.offset_bucket = bucket
        return now_ms + self.offset_ms

    def local_day(self, int64_t now_ms):
        """Days since 1970-01-01 on the program's local calendar."""
        return self._local_ms(now_ms) // MS_PER_DAY

    def period_keys(self, int64_t now_ms):
        """(day, week, month) numbers of `now_ms` on the local calendar: days since 1970-01-01,
        Monday-first weeks since then, and year * 12 + month - 1."""
        cdef int64_t day = self._local_ms(now_ms) // MS_PER_DAY
        if day != self.period_day:
            date = EPOCH_DATE + dt.timedelta(days=day)
            self.period_keys_of_day = (day, (day + 3) // 7, date.year * 12 + date.month - 1)
            self.period_day = day
        return self.period_keys_of_day

    # -----------------------------------------------------------------------------------------
    # Tiers

    def tier_of(self, int64_t spend_minor, int64_t points_earned):
        """(tier, next tier, what is missing for it) for the sums over the tier window. Levels are
        ranked in file order, lowest first; the tier is the last level reached."""
        tier, following, missing = "", "", 0
        for level in self.tier_levels:
            value = spend_minor if level.metric == "spend_minor" else points_earned
            if value >= level.threshold:
                tier, following, missing = level.id, "", 0
            elif not following:
                following, missing = level.id, level.threshold - value
        return tier, following, missing

    def next_tier_after(self, str tier, int64_t spend_minor, int64_t points_earned):
        """(the level after `tier` in file order, what its metric misses) or ("", 0)."""
        ids = [level.id for level in self.tier_levels]
        if tier not in ids or ids.index(tier) + 1 == len(ids):
            return "", 0
        level = self.tier_levels[ids.index(tier) + 1]
        value = spend_minor if level.metric == "spend_minor" else points_earned
        return level.id, max(0, level.threshold - value)

    # -----------------------------------------------------------------------------------------
    # Evaluation

    cdef bint _in_set(self, const CampaignC *c, int kind, uint64_t hash, const char *data,
                      Py_ssize_t length) noexcept:
        cdef const StringRef *table = &self.strings[c.sets[kind].first]
        cdef int count = c.sets[kind].count
        cdef const char *blob = self.blob
        cdef int low = 0, high = count - 1, middle, i
        while low <= high:
            middle = (low + high) // 2
            if table[middle].hash < hash:
                low = middle + 1
            elif table[middle].hash > hash:
                high = middle - 1
            else:
                # equal hashes may be neighbours: compare the bytes of each
                i = middle
                while i > 0 and table[i - 1].hash == hash:
                    i -= 1
                while i < count and table[i].hash == hash:
                    if table[i].length == length and memcmp(blob + table[i].offset, data, length) == 0:
                        return True
                    i += 1
                return False
        return False

    cdef bint _has_prefix(self, const CampaignC *c, int kind, const char *data, Py_ssize_t length) noexcept:
        cdef const char *blob = self.blob
        cdef const StringRef *prefix
        cdef int i
        for i in range(c.prefixes[kind].count):
            prefix = &self.prefix_table[c.prefixes[kind].first + i]
            if prefix.length <= length and memcmp(blob + prefix.offset, data, prefix.length) == 0:
                return True
        return False

    cdef bint _any_label(self, const CampaignC *c, int kind, tuple labels):
        for label in labels:
            data = (<str>label).encode()
            if self._in_set(c, kind, fnv1a(data, len(data)), data, len(data)):
                return True
        return False

    cdef bint _takes(self, const CampaignC *c, const LineC *line) noexcept:
        if c.discount:
            if line.no_discount:
                return False
        elif line.no_earn and c.kind < REDEEM_SHARE:
            return False
        if c.line_filter:
            if not (self._has_prefix(c, PREFIX_CATEGORY, line.category, line.category_length) or
                    (c.sets[SET_SKU].count and
                     self._in_set(c, SET_SKU, line.sku_hash, line.sku, line.sku_length))):
                return False
        if c.sets[SET_BRAND].count and not self._in_set(c, SET_BRAND, line.brand_hash, line.brand,
                                                        line.brand_length):
            return False
        if c.prefixes[PREFIX_EXCLUDE].count and \
                self._has_prefix(c, PREFIX_EXCLUDE, line.category, line.category_length):
            return False
        return line.qty >= c.line_qty_min_milli and line.amount >= c.line_amount_min_minor

    cdef int _reason(self, int k, const LineC *lines, int count, const ContextC *ctx, object shopper,
                     object allowances, object unlocked, int64_t *allowance) except -1:
        """APPLIES, or why campaign `k` does not apply; sets `allowance` to what its ledger-kept
        limits have left (NO_CAP: unlimited)."""
        cdef const CampaignC *c = &self.campaigns[k]
        cdef int s, i, hour
        cdef int64_t qty = 0
        cdef bint taken = False
        allowance[0] = NO_CAP
        if c.valid_from_ms and ctx.now_ms < c.valid_from_ms:
            return R_NOT_YET
        if c.valid_to_ms and ctx.now_ms >= c.valid_to_ms:
            return R_ENDED
        if ctx.total < c.total_min_minor:
            return R_TOTAL
        for s in range(SET_CARD_CATEGORY + 2):  # the receipt's and customer's single values
            if c.sets[s].count and not self._in_set(c, s, ctx.values[s].hash, ctx.values[s].data,
                                                    ctx.values[s].length):
                return R_STORE + s
        if c.sets[SET_SEGMENT].count and not self._any_label(c, SET_SEGMENT, shopper.segments):
            return R_SEGMENT
        if c.sets[SET_TAG].count and not self._any_label(c, SET_TAG, shopper.tags):
            return R_TAG
        if c.sets[SET_CLUB].count and not self._any_label(c, SET_CLUB, shopper.clubs):
            return R_CLUB
        if c.prefixes[PREFIX_CARD_BIN].count and \
                not self._has_prefix(c, PREFIX_CARD_BIN, ctx.card_bin, ctx.card_bin_length):
            return R_CARD_BIN
        if c.weekday_mask and not (c.weekday_mask >> ctx.weekday) & 1:
            return R_WEEKDAY
        if (c.hour_from != 0 or c.hour_to != 24) and not in_hours(c.hour_from, c.hour_to, ctx.hour):
            return R_HOUR
        if c.account_age_min_ms and ctx.now_ms - ctx.created_at_ms < c.account_age_min_ms:
            return R_ACCOUNT_AGE
        if c.birthday_days >= 0 and not 0 <= ctx.birthday_distance <= c.birthday_days:
            return R_BIRTHDAY
        if c.nth_purchase and ctx.purchases + 1 != c.nth_purchase:
            return R_NTH
        if ctx.lifetime_spend_minor < c.lifetime_spend_min_minor:
            return R_SPEND
        if ctx.window_spend_minor < c.window_spend_min_minor:
            return R_WINDOW_SPEND
        if c.promo and (unlocked is None or self.campaign_ids[k] not in unlocked):
            return R_PROMO
        for i in range(count):
            if self._takes(c, &lines[i]):
                taken = True
                qty += lines[i].qty
        if not taken:
            return R_NO_LINE
        if qty < c.item_qty_min_milli:
            return R_ITEM_QTY
        if c.kind == BUNDLE and self._bundles(c, lines, count, &qty) == 0:
            return R_NO_BUNDLE
        # Last, as it may read the ledger: what the campaign's ledger-kept limits have left.
        if c.counted and allowances is not None:
            left = allowances(self.campaign_ids[k])
            if left is not None:
                if left <= 0:
                    return R_EXHAUSTED
                allowance[0] = left
        return APPLIES

    cdef int64_t _bundles(self, const CampaignC *c, const LineC *lines, int count, int64_t *regular) noexcept:
        """Complete sets of a bundle's SKUs among the lines it takes; `regular` gets one set's price
        at each SKU's lowest unit price."""
        cdef const StringRef *sku
        cdef const char *blob = self.blob
        cdef int j, i
        cdef int64_t sets = -1, units, unit_price
        regular[0] = 0
        for j in range(c.sets[SET_SKU].count):
            sku = &self.strings[c.sets[SET_SKU].first + j]
            units = 0
            unit_price = -1
            for i in range(count):
                if lines[i].sku_hash == sku.hash and lines[i].sku_length == sku.length and \
                        memcmp(lines[i].sku, blob + sku.offset, sku.length) == 0 and self._takes(c, &lines[i]):
                    units += lines[i].qty // 1000
                    if unit_price < 0 or lines[i].price < unit_price:
                        unit_price = lines[i].price
            if unit_price < 0:
                return 0
            regular[0] += unit_price
            if sets < 0 or units < sets:
                sets = units
        return sets if sets > 0 else 0

    cdef int64_t _gains(self, const CampaignC *c, const LineC *lines, int count, int64_t *gains,
                        int64_t *weights, Share *order) except -1:
        """What campaign `c` gives each line (points or minor units), uncapped; returns the sum."""
        cdef int i, k, n = 0
        cdef int64_t net, sum_net = 0, total = 0, remainder, units, free_units
        for i in range(count):
            gains[i] = 0
            weights[i] = 0
            if self._takes(c, &lines[i]):
                weights[i] = lines[i].amount - lines[i].discount
                sum_net += weights[i]
                order[n].index = i
                order[n].remainder = lines[i].price
                n += 1
        if n == 0 or c.kind >= REDEEM_SHARE:
            return 0
        if c.kind == EARN_PERCENT or c.kind == DISCOUNT_PERCENT:
            for k in range(n):
                i = order[k].index
                gains[i] = apply_rate(weights[i], c.bps, self.rounding)
                if c.kind == DISCOUNT_PERCENT and gains[i] > weights[i]:
                    gains[i] = weights[i]
        elif c.kind == EARN_MULTIPLIER:
            for k in range(n):
                i = order[k].index
                gains[i] = apply_rate(lines[i].base_earned, c.multiplier_bps - BPS_PER_UNIT, self.rounding)
        elif c.kind == EARN_FIXED and c.per != PER_RECEIPT:
            for k in range(n):
                i = order[k].index
                gains[i] = c.points if c.per == PER_LINE else kassa_muldiv(c.points, lines[i].qty, 1000, &remainder)
        elif c.kind == FIXED_PRICE:
            for k in range(n):
                i = order[k].index
                net = weights[i] - kassa_muldiv(c.price_minor, lines[i].qty, 1000, &remainder)
                gains[i] = net if net > 0 else 0
        elif c.kind == BUY_X_GET_Y:
            units = 0
            for k in range(n):
                units += lines[order[k].index].qty // 1000
            free_units = units // (c.buy + c.get) * c.get
            qsort(order, n, sizeof(Share), compare_cheapest)
            for k in range(n):
                if free_units == 0:
                    break
                i = order[k].index
                units = min(free_units, lines[i].qty // 1000)
                free_units -= units
                gains[i] = min(weights[i], units * lines[i].price)
        else:  # an amount for the whole receipt, spread over the lines by their net
            if c.kind == EARN_FIXED:
                total = c.points
                if sum_net == 0:  # equal parts over the lines taken
                    for k in range(n):
                        weights[order[k].index] = 1
            elif c.kind == EARN_PER_STEP:
                total = sum_net // c.step_minor * c.points
            elif c.kind == BUNDLE:
                units = self._bundles(c, lines, count, &remainder)  # `remainder`: one set's regular price
                total = min(units * max(0, remainder - c.price_minor), sum_net)
            else:  # DISCOUNT_FIXED
                total = min(c.amount_minor, sum_net)
            if total > 0 and prorate(total, weights, gains, count) < 0:
                raise MemoryError()
        total = 0
        for i in range(count):
            total += gains[i]
        return total

    cdef int64_t _capped(self, const CampaignC *c, int64_t allowance, int64_t *gains, int64_t *scratch,
                         int count, int64_t given) except -1:
        """Cap `gains` (summing to `given`) by the per-receipt cap and `allowance`; the cut is
        spread in proportion to the uncapped amounts. Returns the new sum."""
        cdef int64_t cap = c.receipt_cap
        cdef int i
        if allowance != NO_CAP and (cap == NO_CAP or allowance < cap):
            cap = allowance
        if cap == NO_CAP or given <= cap:
            return given
        if prorate(cap, gains, scratch, count) < 0:
            raise MemoryError()
        for i in range(count):
            gains[i] = scratch[i]
        return cap

    def calculate(self, receipt, int64_t now_ms, int64_t available_points, int64_t redeem_points,
                  shopper=None, allowances=None, unlocked=None, bint explain=False, int64_t captured_points=0):
        """Evaluate the whole receipt. `available_points` bounds the redeemable amount; the caller
        checks `redeem_points` and `captured_points` (held points that the purchase captures, not
        in `available_points`) together against `redeemable_points` of the result. `shopper` holds what the
        rules may ask of the customer, `allowances` what each campaign's ledger-kept limits have
        left ({campaign id: amount}, or a function of the campaign id, asked only about campaigns
        that apply otherwise), `unlocked` the campaigns whose promo code was accepted."""
        lines = receipt.lines
        cdef int count = len(lines)
        if count > LINES_PER_RECEIPT_MAX:
            raise ValueError(f"{count} lines, more than {LINES_PER_RECEIPT_MAX}")
        cdef int lanes = max(1, count)
        cdef int slots = max(1, self.campaign_count)
        cdef LineC *c_lines = <LineC *>calloc(2 * lanes, sizeof(LineC))
        cdef int64_t *buffers = <int64_t *>calloc(3 * lanes + 2 * slots, sizeof(int64_t))
        cdef Share *order = <Share *>calloc(lanes, sizeof(Share))
        cdef int *reasons = <int *>calloc(slots, sizeof(int))
        if c_lines == NULL or buffers == NULL or order == NULL or reasons == NULL:
            free(c_lines); free(buffers); free(order); free(reasons)
            raise MemoryError()
        try:
            return self._calculate(receipt, lines, c_lines, count, buffers, order, reasons, now_ms,
                                   available_points, redeem_points, captured_points,
                                   NO_SHOPPER if shopper is None else shopper,
                                   allowances.get if isinstance(allowances, dict) else allowances, unlocked, explain)
        finally:
            free(c_lines); free(buffers); free(order); free(reasons)

    cdef _calculate(self, receipt, lines, LineC *c_lines, int count, int64_t *buffers, Share *order,
                    int *reasons, int64_t now_ms, int64_t available_points, int64_t redeem_points,
                    int64_t captured_points, shopper, allowances, unlocked, bint explain):
        cdef int lanes = max(1, count)
        cdef int slots = max(1, self.campaign_count)
        cdef LineC *fresh = c_lines + lanes           # the receipt as it came, for best-of values
        cdef int64_t *gains = buffers
        cdef int64_t *weights = buffers + lanes
        cdef int64_t *scratch = buffers + 2 * lanes
        cdef int64_t *allowance = buffers + 3 * lanes  # per campaign
        cdef int64_t *value = allowance + slots         # per campaign: its best-of value
        cdef int i, k, j, phase, stop = -1
        cdef int64_t discount = 0, earned = 0, payable, redeemable, given, local_ms
        cdef ContextC ctx
        cdef const CampaignC *c
        keep_alive = []
        ctx.now_ms = now_ms
        ctx.total = 0
        for i in range(count):
            line = lines[i]
            sku, category = line.sku.encode(), line.category.encode()
            brand = line.brand.encode() if self.needs_brands else b""
            keep_alive.append((sku, category, brand))
            c_lines[i].amount = line.amount_minor
            c_lines[i].qty = line.qty_milli
            c_lines[i].price = line.price_minor
            c_lines[i].discount = c_lines[i].earned = c_lines[i].base_earned = c_lines[i].redeemed = 0
            c_lines[i].captured = 0
            c_lines[i].sku, c_lines[i].sku_length = sku, len(sku)
            c_lines[i].sku_hash = fnv1a(sku, len(sku))
            c_lines[i].brand, c_lines[i].brand_length = brand, len(brand)
            c_lines[i].brand_hash = fnv1a(brand, len(brand))
            c_lines[i].category, c_lines[i].category_length = category, len(category)
            c_lines[i].no_earn = line.no_earn
            c_lines[i].no_discount = line.no_discount
            ctx.total += line.amount_minor
        values = (receipt.store_id.encode(), receipt.region.encode(), receipt.channel.encode(),
                  receipt.terminal_id.encode(), receipt.payment_method.encode(),
                  shopper.card_category.encode(), shopper.tier.encode(),
                  receipt.card_bin.encode()) if self.needs_values else NO_VALUES
        for i in range(7):
            ctx.values[i].data = values[i]
            ctx.values[i].length = len(values[i])
            ctx.values[i].hash = fnv1a(ctx.values[i].data, ctx.values[i].length)
        ctx.card_bin, ctx.card_bin_length = values[7], len(values[7])
        ctx.created_at_ms = shopper.created_at_ms
        ctx.purchases = shopper.purchases
        ctx.lifetime_spend_minor = shopper.lifetime_spend_minor
        ctx.window_spend_minor = shopper.window_spend_minor
        ctx.no_points = shopper.card_blocked and not self.blocked_card_earns
        ctx.weekday = ctx.hour = 0
        ctx.birthday_distance = -1
        if self.needs_local_time:
            local_ms = self._local_ms(now_ms)
            ctx.local_day = local_ms // MS_PER_DAY
            ctx.weekday = (ctx.local_day + 3) % 7 + 1  # 1970-01-01 was a Thursday
            ctx.hour = (local_ms % MS_PER_DAY) // MS_PER_HOUR
            if self.needs_birthday:
                ctx.birthday_distance = _birthday_distance(shopper.birthday,
                                                           EPOCH_DATE + dt.timedelta(days=ctx.local_day))

        # 1. The walk: every applicable campaign, by priority; an applicable exclusive one stops it.
        for k in range(self.campaign_count):
            reasons[k] = R_STOPPED if stop >= 0 else self._reason(k, c_lines, count, &ctx, shopper,
                                                                   allowances, unlocked, &allowance[k])
            if reasons[k] == R_STOPPED:
                value[k] = stop  # the exclusive campaign that stopped it, for the explanation
            if reasons[k] == APPLIES and self.campaigns[k].stacking == EXCLUSIVE:
                stop = k
        # 2. Best-of: of each group's applicable `best` campaigns only the one worth most stays.
        for k in range(self.campaign_count):
            c = &self.campaigns[k]
            if reasons[k] == APPLIES and c.stacking == BEST:
                for i in range(count):
                    fresh[i] = c_lines[i]
                given = self._gains(c, fresh, count, gains, weights, order)
                value[k] = self._capped(c, allowance[k], gains, scratch, count, given)
        for k in range(self.campaign_count):
            if reasons[k] != APPLIES or self.campaigns[k].stacking != BEST:
                continue
            for j in range(self.campaign_count):
                if j != k and reasons[j] == APPLIES and self.campaigns[j].stacking == BEST and \
                        self.campaigns[j].best_group == self.campaigns[k].best_group and \
                        (value[j] > value[k] or (value[j] == value[k] and j < k)):
                    reasons[k] = R_TIED_BEST if value[j] == value[k] else R_LOST_BEST
                    value[k] = j  # the winner, for the explanation
                    break
        # A blocked card under blocked_card_earns = false: the selection is the active card's (its
        # earn campaigns still stop later ones and win their best-of groups); only then do they,
        # and tier grants, give nothing.
        if ctx.no_points:
            for k in range(self.campaign_count):
                if reasons[k] == APPLIES and gives_points(self.campaigns[k].kind):
                    reasons[k] = R_CARD_BLOCKED
        # 3. Discounts, then earn on what is left to pay, then multipliers of that earn.
        applied, limited = [], []
        cdef int64_t share_bps = self.max_redeem_share_bps
        cdef bint share_set = False
        for phase in range(4):
            if phase == 2:
                for i in range(count):
                    c_lines[i].base_earned = c_lines[i].earned
            for k in range(self.campaign_count):
                c = &self.campaigns[k]
                if reasons[k] != APPLIES or phase != pass_of(c.kind):
                    continue
                if c.kind == REDEEM_SHARE and not share_set:
                    share_bps, share_set = c.bps, True
                given = self._gains(c, c_lines, count, gains, weights, order)
                given = self._capped(c, allowance[k], gains, scratch, count, given)
                for i in range(count):
                    if c.discount:
                        c_lines[i].discount += gains[i]
                    else:
                        c_lines[i].earned += gains[i]
                campaign_id = self.campaign_ids[k]
                applied.append(AppliedCampaign(campaign_id, KIND_NAMES[c.kind], 0 if c.discount else given,
                                               given if c.discount else 0))
                if c.recorded:
                    limited.append((campaign_id, tuple([gains[i] for i in range(count)])))

        for i in range(count):
            discount += c_lines[i].discount
            earned += c_lines[i].earned
        payable = ctx.total - discount
        # Captured holds were reserved out of the available points: they pay beside them, and
        # count against the same share of the receipt as the points redeemed.
        redeemable = apply_rate(payable, share_bps, ROUND_FLOOR)
        redeemable = max(0, min(redeemable, available_points + captured_points))
        redeemed = captured = 0
        if 0 < redeem_points + captured_points <= redeemable:
            self._spread_points(c_lines, count, redeem_points, captured_points, weights, gains)
            redeemed, captured = redeem_points, captured_points

        # Activation and expiry fall on UTC day boundaries, so that one account's purchases of a
        # day share one lot: an account holds at most one open lot per day of its points' lifetime.
        activate_at_ms, expire_at_ms = self._lot_dates(now_ms, self.activation_delay_ms, self.lifetime_ms)
        lots = ()
        if self.own_lots:
            lots = self._own_lots(applied, now_ms, activate_at_ms, expire_at_ms)
        explained = ()
        if explain:
            explained = tuple([self._explain(k, reasons[k], value[k], applied) for k in range(self.campaign_count)])
        return Calculation(
            tuple([LineResult(lines[i].line_no, c_lines[i].amount, c_lines[i].discount,
                              c_lines[i].earned, c_lines[i].redeemed, c_lines[i].captured) for i in range(count)]),
            ctx.total, discount, payable, earned, redeemable, redeemed, tuple(applied), self.version,
            activate_at_ms, expire_at_ms, (), explained, tuple(limited), lots, captured,
            NO_POINTS_CARD_BLOCKED if ctx.no_points else "",
        )

    cdef int _spread_points(self, LineC *lines, int count, int64_t redeemed, int64_t captured, int64_t *weights,
                            int64_t *shares) except -1:
        """Spread the points redeemed over the lines by what each has to pay, then the points
        captured over what each has left to pay: no line is paid past its amount."""
        cdef int i
        for i in range(count):
            weights[i] = lines[i].amount - lines[i].discount
        if redeemed:
            if prorate(redeemed, weights, shares, count) < 0:
                raise MemoryError()
            for i in range(count):
                lines[i].redeemed = shares[i]
                weights[i] -= shares[i]
        if captured:
            if prorate(captured, weights, shares, count) < 0:
                raise MemoryError()
            for i in range(count):
                lines[i].captured = shares[i]
        return 0

    def credit_expiry(self, int64_t now_ms):
        """When points credited at `now_ms`, active at once, expire (0: never): the program's
        lifetime, on a UTC midnight as every lot's dates are."""
        return self._lot_dates(now_ms, 0, self.lifetime_ms)[1]

    cdef tuple _lot_dates(self, int64_t now_ms, int64_t delay_ms, int64_t lifetime_ms):
        """(activation, expiry) of points earned at `now_ms`. They fall on UTC day boundaries, so
        that one account's purchases of a day share one lot."""
        cdef int64_t activate_at_ms = day_end_ms(now_ms + delay_ms) if delay_ms else now_ms
        return activate_at_ms, (day_end_ms(activate_at_ms + lifetime_ms) if lifetime_ms else 0)

    cdef tuple _own_lots(self, list applied, int64_t now_ms, int64_t main_activate_ms, int64_t main_expire_ms):
        """The points of applied campaigns with their own activation or lifetime, by lot dates."""
        groups = {}
        for item in applied:
            own = self.own_lots.get(item.campaign_id)
            if own is None or item.points == 0:
                continue
            dates = self._lot_dates(now_ms, self.activation_delay_ms if own[0] is None else own[0],
                                    self.lifetime_ms if own[1] is None else own[1])
            if dates != (main_activate_ms, main_expire_ms):
                groups[dates] = groups.get(dates, 0) + item.points
        return tuple([(dates[0], dates[1], points) for dates, points in sorted(groups.items())])

    cdef _explain(self, int k, int reason, int64_t value, list applied):
        campaign_id = self.campaign_ids[k]
        if reason == APPLIES:
            for item in applied:
                if item.campaign_id == campaign_id:
                    if self.campaigns[k].kind == REDEEM_SHARE:
                        gave = f"points may pay {self.campaigns[k].bps} bps of the receipt"
                    elif self.campaigns[k].kind == GRANT_TIER:
                        gave = "grants tier '{}' for {} days".format(*self.grants[campaign_id])
                    else:
                        gave = f"{item.discount_minor} off" if self.campaigns[k].discount else f"{item.points} points"
                    return CampaignExplain(campaign_id, True, f"applied: {gave}")
        if reason == R_STOPPED:
            return CampaignExplain(campaign_id, False,
                                   f"stopped by the exclusive campaign '{self.campaign_ids[value]}', which applied first")
        if reason == R_LOST_BEST:
            return CampaignExplain(campaign_id, False, f"best-of: '{self.campaign_ids[value]}' is worth more")
        if reason == R_TIED_BEST:
            return CampaignExplain(campaign_id, False, f"best-of: tied with '{self.campaign_ids[value]}', which "
                                   "wins by priority, then file order")
        text = REASONS[reason]
        if text.startswith("when."):
            text = f"condition {text} not met"
        return CampaignExplain(campaign_id, False, text)

    # -----------------------------------------------------------------------------------------
    # Events (billing systems' non-purchase events; not the checkout hot path)

    def evaluate_event(self, str event_type, dict attributes, int64_t amount_minor, int64_t now_ms,
                       shopper=None, allowances=None, bint with_related=False):
        """The event campaigns' result for one event: an `EventCalculation`. `related_points` are
        given only `with_related` (the event names a related customer). `allowances` as for
        `calculate`: a dict or a function of the campaign id."""
        shopper = NO_SHOPPER if shopper is None else shopper
        lookup = allowances.get if isinstance(allowances, dict) else allowances
        local = EPOCH_DATETIME + dt.timedelta(milliseconds=self._local_ms(now_ms))
        chosen, left = [], {}
        for campaign in self.event_campaigns:
            if not self._event_applies(campaign, event_type, attributes, now_ms, local, shopper):
                continue
            left[campaign.id] = None if lookup is None else lookup(campaign.id)
            if left[campaign.id] is not None and left[campaign.id] <= 0:
                continue
            chosen.append(campaign)
            if campaign.stacking == "exclusive":
                break
        results = {c.id: self._event_gain(c, amount_minor, left[c.id], with_related) for c in chosen}
        kept = []
        for campaign in chosen:
            if campaign.stacking == "best" and any(
                    other.stacking == "best" and other.best_group == campaign.best_group and (
                        sum(results[other.id]) > sum(results[campaign.id])
                        or (sum(results[other.id]) == sum(results[campaign.id])
                            and chosen.index(other) < chosen.index(campaign)))
                    for other in chosen if other is not campaign):
                continue
            kept.append(campaign)
        points = sum(results[c.id][0] for c in kept)
        related = sum(results[c.id][1] for c in kept)
        lifetime_ms, delay_ms = self.lifetime_ms, self.activation_delay_ms
        giving = [c for c in kept if results[c.id][0] or results[c.id][1]]
        own = [c.effect.points_lifetime_days for c in giving if c.effect.points_lifetime_days is not None]
        if own:  # the shortest lifetime; 0 (never expires) only when every own lifetime is 0
            lifetime_ms = min([days for days in own if days] or [0]) * MS_PER_DAY
        delays = [c.effect.activation_delay_days for c in giving if c.effect.activation_delay_days is not None]
        if delays:
            delay_ms = max(delays) * MS_PER_DAY
        activate_at_ms, expire_at_ms = self._lot_dates(now_ms, delay_ms, lifetime_ms)
        return EventCalculation(
            points, related,
            tuple([AppliedCampaign(c.id, c.effect.kind, results[c.id][0] + results[c.id][1], 0) for c in kept]),
            tuple([(c.id, results[c.id]) for c in kept if c.id in self.limits]),  # (customer's, related's)
            self.version, activate_at_ms, expire_at_ms)

    def _event_applies(self, campaign, event_type, attributes, int64_t now_ms, local, shopper):
        when = campaign.when
        if campaign.valid_from and now_ms < to_ms(campaign.valid_from):
            return False
        if campaign.valid_to and now_ms >= to_ms(campaign.valid_to):
            return False
        if event_type not in when.event_types:
            return False
        if any(attributes.get(key) != value for key, value in when.event_attributes.items()):
            return False
        for field, value in (("stores", attributes.get("store_id", "")), ("regions", attributes.get("region", "")),
                             ("channels", attributes.get("channel", "")),
                             ("card_categories", shopper.card_category), ("tiers", shopper.tier)):
            allowed = getattr(when, field)
            if allowed and value not in allowed:
                return False
        for field in ("segments", "tags", "clubs"):
            allowed = getattr(when, field)
            if allowed and not set(allowed) & set(getattr(shopper, field)):
                return False
        if when.weekdays and local.isoweekday() not in when.weekdays:
            return False
        if (when.hour_from != 0 or when.hour_to != 24) and not in_hours(when.hour_from, when.hour_to, local.hour):
            return False
        if now_ms - shopper.created_at_ms < when.account_age_days_min * MS_PER_DAY:
            return False
        if when.birthday_within_days is not None and \
                not 0 <= _birthday_distance(shopper.birthday, local.date()) <= when.birthday_within_days:
            return False
        if when.nth_purchase and shopper.purchases + 1 != when.nth_purchase:
            return False
        if shopper.lifetime_spend_minor < when.lifetime_spend_min_minor:
            return False
        return shopper.window_spend_minor >= when.window_spend_min_minor

    def _event_gain(self, campaign, int64_t amount_minor, left, bint with_related):
        """(points for the customer, points for the related customer), capped by the per-event cap
        and by `left`, what the ledger-kept limits allow (None: no such limit)."""
        effect = campaign.effect
        if effect.kind == "earn_fixed":
            points = effect.points
        elif effect.kind == "earn_percent":
            points = apply_rate(amount_minor, effect.percent_bps, self.rounding)
        else:
            points = amount_minor // effect.step_minor * effect.points
        related = effect.related_points if with_related else 0
        cap = campaign.limits.receipt_max_points or None
        if left is not None:
            cap = left if cap is None else min(cap, left)
        if cap is not None and points + related > cap:
            points, related = prorate_points(cap, [points, related]) if points + related else (0, 0)
        return points, related
