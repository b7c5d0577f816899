"""Limits and units of the core, each defined here once.

The Python modules import them from here and the Cython modules read them at import into typed C
globals (core_ext/rules.pyx, server/wire.pyx), so a value is never mirrored by hand. The request
limits are enforced with an error that names the field.
"""

BPS_PER_UNIT = 10_000  # basis points in 100 %
CAMPAIGNS_PER_PROGRAM_MAX = 4096  # campaigns in one loyalty program

LINES_PER_RECEIPT_MAX = 1000  # lines
REQUEST_ID_BYTES_MAX = 128  # bytes of UTF-8
IDENTIFIER_BYTES_MAX = 64  # bytes of UTF-8, for account ids, cards, phones, skus, store ids
CATEGORY_BYTES_MAX = 128  # bytes of UTF-8
AMOUNT_MINOR_MAX = 10**13  # minor units per line, receipt or redemption (100 billion units)
QTY_MILLI_MAX = 10**9  # thousandths of a unit per line (one million units)
POINTS_MAX = 10**13  # points in minor units per operation
TRANSACTION_ID_MAX = 2**63 - 1  # transaction ids are stored as signed 64-bit
RETURN_LINES_MAX = LINES_PER_RECEIPT_MAX  # lines named in one return
CAPTURE_HOLDS_MAX = 16  # holds captured by one Accrue
LABELS_PER_ACCOUNT_MAX = 64  # segments, tags or clubs on one account, each
REASON_BYTES_MAX = 512  # bytes of UTF-8 in an adjustment's reason
SWEEP_ACCOUNTS_MAX = 5_000  # accounts settled by one expiry-sweep transaction
STATEMENT_PAGE_SIZE_DEFAULT = 50  # transactions
STATEMENT_PAGE_SIZE_MAX = 500  # transactions
MS_PER_DAY = 86_400_000  # milliseconds
TIMESTAMP_MS_MAX = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z, the end of google.protobuf.Timestamp's range
PARTITIONS_MAX = 256  # LMDB environments of one ledger (ledger.partitions); ids of 2 bytes in the directory
PARTITION_SHIFT_BITS = 48  # a transaction id's partition is its bits from here up (2**48 ids a partition)
