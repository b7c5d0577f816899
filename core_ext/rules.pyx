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

include "consts.pxi"

from core_ext.model import AppliedCampaign, Calculation, LineResult

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
    DISCOUNT_PERCENT = 3

cdef enum Rounding:
    ROUND_FLOOR = 0
    ROUND_HALF_UP = 1
    ROUND_CEIL = 2

EFFECT_KINDS = {"earn_percent": EARN_PERCENT, "earn_fixed": EARN_FIXED, "discount_percent": DISCOUNT_PERCENT}
ROUNDINGS = {"floor": ROUND_FLOOR, "half_up": ROUND_HALF_UP, "ceil": ROUND_CEIL}
DEF MS_PER_DAY = 86_400_000  # milliseconds

cdef struct CampaignC:
    int kind
    bint exclusive
    int64_t bps
    int64_t points
    int64_t total_min_minor
    int64_t valid_from_ms     # 0: open
    int64_t valid_to_ms       # 0: open
    int prefix_first          # into the prefix table
    int prefix_count
    int sku_first             # into the sorted sku table
    int sku_count
    int store_first           # into the sorted store table
    int store_count

cdef struct StringRef:
    uint64_t hash
    int offset                # into the string blob
    int length

cdef struct LineC:
    int64_t amount
    int64_t discount
    int64_t earned
    int64_t redeemed
    uint64_t sku_hash
    const char *sku
    Py_ssize_t sku_length
    const char *category
    Py_ssize_t category_length
    bint no_earn
    bint no_discount

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


cdef class Program:
    """A compiled loyalty program. Immutable once built; swap the object to change rules."""

    cdef CampaignC *campaigns
    cdef int campaign_count
    cdef StringRef *prefixes
    cdef StringRef *skus
    cdef StringRef *stores
    cdef bytes blob
    cdef int rounding
    cdef readonly object spec
    cdef readonly list campaign_ids
    cdef readonly str version
    cdef readonly int64_t max_redeem_share_bps
    cdef readonly int64_t activation_delay_ms
    cdef readonly int64_t lifetime_ms
    cdef readonly bint clawback_clamp
    cdef readonly bint blocked_card_earns
    cdef readonly int64_t inactivity_burn_ms

    def __cinit__(self, spec):
        campaigns = sorted(spec.campaigns, key=lambda c: -c.priority)  # stable: file order breaks ties
        if len(campaigns) > CAMPAIGNS_PER_PROGRAM_MAX:
            raise ValueError(f"{len(campaigns)} campaigns, more than {CAMPAIGNS_PER_PROGRAM_MAX}")
        self.spec = spec
        self.version = spec.version
        self.campaign_ids = [c.id for c in campaigns]
        settings = spec.settings
        self.rounding = ROUNDINGS[settings.rounding]
        self.max_redeem_share_bps = settings.max_redeem_share_bps
        self.activation_delay_ms = settings.activation_delay_days * MS_PER_DAY
        self.lifetime_ms = settings.points_lifetime_days * MS_PER_DAY
        self.clawback_clamp = settings.clawback == "clamp"
        self.blocked_card_earns = settings.blocked_card_earns
        self.inactivity_burn_ms = settings.inactivity_burn_days * MS_PER_DAY
        self._compile(campaigns)

    cdef _compile(self, list campaigns):
        prefix_strings, sku_strings, store_strings = [], [], []
        blob = bytearray()
        self.campaign_count = len(campaigns)
        self.campaigns = <CampaignC *>calloc(max(1, len(campaigns)), sizeof(CampaignC))
        if self.campaigns == NULL:
            raise MemoryError()
        cdef CampaignC *c
        for index, campaign in enumerate(campaigns):
            c = &self.campaigns[index]
            c.kind = EFFECT_KINDS[campaign.effect.kind]
            c.exclusive = campaign.stacking == "exclusive"
            c.bps = campaign.effect.percent_bps
            c.points = campaign.effect.points
            c.total_min_minor = campaign.when.receipt_total_min_minor
            c.valid_from_ms = to_ms(campaign.valid_from)
            c.valid_to_ms = to_ms(campaign.valid_to)
            c.prefix_first, c.prefix_count = len(prefix_strings), len(campaign.when.category_prefixes)
            prefix_strings.extend(campaign.when.category_prefixes)
            c.sku_first, c.sku_count = len(sku_strings), len(set(campaign.when.skus))
            sku_strings.extend(sorted(set(campaign.when.skus)))
            c.store_first, c.store_count = len(store_strings), len(set(campaign.when.stores))
            store_strings.extend(sorted(set(campaign.when.stores)))
        self.prefixes = self._string_table(prefix_strings, blob)
        self.skus = self._string_table(sku_strings, blob)
        self.stores = self._string_table(store_strings, blob)
        for index in range(self.campaign_count):
            c = &self.campaigns[index]
            qsort(&self.skus[c.sku_first], c.sku_count, sizeof(StringRef), compare_string_ref)
            qsort(&self.stores[c.store_first], c.store_count, sizeof(StringRef), compare_string_ref)
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
        free(self.prefixes)
        free(self.skus)
        free(self.stores)

    # -----------------------------------------------------------------------------------------
    # Evaluation

    cdef bint _in_table(self, const StringRef *table, int count, uint64_t hash,
                        const char *data, Py_ssize_t length) noexcept:
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

    cdef bint _line_matches(self, const CampaignC *c, const LineC *line) noexcept:
        cdef const char *blob = self.blob
        cdef const StringRef *prefix
        cdef int i
        if c.prefix_count == 0 and c.sku_count == 0:
            return True
        for i in range(c.prefix_count):
            prefix = &self.prefixes[c.prefix_first + i]
            if prefix.length <= line.category_length and \
                    memcmp(blob + prefix.offset, line.category, prefix.length) == 0:
                return True
        return c.sku_count > 0 and self._in_table(
            &self.skus[c.sku_first], c.sku_count, line.sku_hash, line.sku, line.sku_length)

    cdef bint _campaign_eligible(self, const CampaignC *c, const LineC *lines, int count,
                                 int64_t total, int64_t now_ms, uint64_t store_hash,
                                 const char *store, Py_ssize_t store_length) noexcept:
        cdef int i
        if c.valid_from_ms and now_ms < c.valid_from_ms:
            return False
        if c.valid_to_ms and now_ms >= c.valid_to_ms:
            return False
        if total < c.total_min_minor:
            return False
        if c.store_count and not self._in_table(&self.stores[c.store_first], c.store_count,
                                                store_hash, store, store_length):
            return False
        for i in range(count):
            if self._line_takes(c, &lines[i]):
                return True
        return False

    cdef inline bint _line_takes(self, const CampaignC *c, const LineC *line) noexcept:
        if c.kind == DISCOUNT_PERCENT and line.no_discount:
            return False
        if c.kind != DISCOUNT_PERCENT and line.no_earn:
            return False
        return self._line_matches(c, line)

    cdef int64_t _apply(self, const CampaignC *c, LineC *lines, int count, int64_t *scratch,
                        int64_t *shares) except -1:
        """Apply one campaign's effect to the lines it takes; returns the points or discount given."""
        cdef int64_t given = 0, net, amount
        cdef int i
        if c.kind == EARN_FIXED:
            for i in range(count):
                scratch[i] = lines[i].amount - lines[i].discount if self._line_takes(c, &lines[i]) else 0
            if prorate(c.points, scratch, shares, count) < 0:
                raise MemoryError()
            for i in range(count):
                if self._line_takes(c, &lines[i]):
                    lines[i].earned += shares[i]
                    given += shares[i]
            return given
        for i in range(count):
            if not self._line_takes(c, &lines[i]):
                continue
            net = lines[i].amount - lines[i].discount
            amount = apply_rate(net, c.bps, self.rounding)
            if c.kind == DISCOUNT_PERCENT:
                amount = min(amount, net)
                lines[i].discount += amount
            else:
                lines[i].earned += amount
            given += amount
        return given

    def calculate(self, receipt, int64_t now_ms, int64_t available_points, int64_t redeem_points):
        """Evaluate the whole receipt. `available_points` bounds the redeemable amount; the caller
        checks `redeem_points` against `redeemable_points` of the result."""
        lines = receipt.lines
        cdef int count = len(lines)
        if count > LINES_PER_RECEIPT_MAX:
            raise ValueError(f"{count} lines, more than {LINES_PER_RECEIPT_MAX}")
        cdef LineC *c_lines = <LineC *>calloc(max(1, count), sizeof(LineC))
        cdef int64_t *scratch = <int64_t *>calloc(max(1, count), sizeof(int64_t))
        cdef int64_t *shares = <int64_t *>calloc(max(1, count), sizeof(int64_t))
        cdef bint *chosen = <bint *>calloc(max(1, self.campaign_count), sizeof(bint))
        if c_lines == NULL or scratch == NULL or shares == NULL or chosen == NULL:
            free(c_lines); free(scratch); free(shares); free(chosen)
            raise MemoryError()
        try:
            return self._calculate(receipt, lines, c_lines, count, scratch, shares, chosen,
                                   now_ms, available_points, redeem_points)
        finally:
            free(c_lines); free(scratch); free(shares); free(chosen)

    cdef _calculate(self, receipt, lines, LineC *c_lines, int count, int64_t *scratch,
                    int64_t *shares, bint *chosen, int64_t now_ms, int64_t available_points,
                    int64_t redeem_points):
        cdef int i, k
        cdef int64_t total = 0, discount = 0, earned = 0, payable, redeemable
        keep_alive = []
        for i in range(count):
            line = lines[i]
            sku = line.sku.encode()
            category = line.category.encode()
            keep_alive.append(sku)
            keep_alive.append(category)
            c_lines[i].amount = line.amount_minor
            c_lines[i].sku = sku
            c_lines[i].sku_length = len(sku)
            c_lines[i].sku_hash = fnv1a(sku, len(sku))
            c_lines[i].category = category
            c_lines[i].category_length = len(category)
            c_lines[i].no_earn = line.no_earn
            c_lines[i].no_discount = line.no_discount
            total += line.amount_minor
        store = receipt.store_id.encode()
        cdef uint64_t store_hash = fnv1a(store, len(store))

        # Which campaigns apply: by priority, an eligible exclusive one stops all below it.
        for k in range(self.campaign_count):
            if self._campaign_eligible(&self.campaigns[k], c_lines, count, total, now_ms,
                                       store_hash, store, len(store)):
                chosen[k] = True
                if self.campaigns[k].exclusive:
                    break

        # Discounts first, so that earn is computed on what the customer pays.
        applied_discounts, applied_earns = [], []
        for k in range(self.campaign_count):
            if chosen[k] and self.campaigns[k].kind == DISCOUNT_PERCENT:
                given = self._apply(&self.campaigns[k], c_lines, count, scratch, shares)
                applied_discounts.append(AppliedCampaign(self.campaign_ids[k], "discount_percent", 0, given))
        for k in range(self.campaign_count):
            if chosen[k] and self.campaigns[k].kind != DISCOUNT_PERCENT:
                given = self._apply(&self.campaigns[k], c_lines, count, scratch, shares)
                effect = "earn_fixed" if self.campaigns[k].kind == EARN_FIXED else "earn_percent"
                applied_earns.append(AppliedCampaign(self.campaign_ids[k], effect, given, 0))

        for i in range(count):
            discount += c_lines[i].discount
            earned += c_lines[i].earned
        payable = total - discount
        redeemable = apply_rate(payable, self.max_redeem_share_bps, ROUND_FLOOR)
        redeemable = max(0, min(redeemable, available_points))
        redeemed = 0
        if 0 < redeem_points <= redeemable:
            for i in range(count):
                scratch[i] = c_lines[i].amount - c_lines[i].discount
            if prorate(redeem_points, scratch, shares, count) < 0:
                raise MemoryError()
            for i in range(count):
                c_lines[i].redeemed = shares[i]
            redeemed = redeem_points

        # Activation and expiry fall on UTC day boundaries, so that one account's purchases of a
        # day share one lot: an account holds at most one open lot per day of its points' lifetime.
        activate_at_ms = day_end_ms(now_ms + self.activation_delay_ms) if self.activation_delay_ms else now_ms
        expire_at_ms = day_end_ms(activate_at_ms + self.lifetime_ms) if self.lifetime_ms else 0
        return Calculation(
            tuple([LineResult(lines[i].line_no, c_lines[i].amount, c_lines[i].discount,
                              c_lines[i].earned, c_lines[i].redeemed) for i in range(count)]),
            total, discount, payable, earned, redeemable, redeemed,
            tuple(applied_discounts + applied_earns), self.version, activate_at_ms, expire_at_ms,
        )
