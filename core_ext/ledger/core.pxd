# The classes the ledger's files share: every file of this folder is included into core.pyx,
# and these declarations are what crosses between them.

cdef class _Batch:
    cdef readonly object txn
    cdef readonly dict dbs
    cdef readonly long long now_ms
    cdef readonly long long next_id
    cdef public str actor  # of the operation being applied, stamped on its journal entries
    cdef dict cursors  # one per database, opened when first used
    cdef readonly long long reads  # LMDB gets made, hits and misses: what the bench and tests count
    cdef readonly long long writes  # LMDB puts and appends

    cdef object _cursor(self, str name)
    cpdef get(self, str name, bytes key)
    cpdef put(self, str name, bytes key, bytes value)
    cpdef append(self, str name, bytes key, bytes value)
    cpdef long long take_id(self)


cdef class _ReadView:
    cdef object txn
    cdef dict dbs
    cdef dict lots


cdef class Ledger:
    cdef readonly object env
    cdef readonly str path
    cdef dict dbs
    cdef public object program
    cdef readonly long long hold_ttl_ms
    cdef dict _handlers
    cdef object _switched  # a ruleset written by this group, served once it commits
    # (LMDB gets, puts) the operations of the last committed group made (None before one): what a
    # purchase costs in LMDB calls, for the bench and the tests
    cdef readonly tuple last_group_calls
    cdef object _counted_program  # the program `_counted` was built for
    cdef dict _counted  # campaign id -> (amount limits [(period, cap)], uses cap), of `program`
    cdef long long _now_ms  # of the group being applied
    cdef bint _sync  # commits are durable before `apply` returns
    cdef readonly object archive  # the journal archive's segments: entries below its boundary
    cdef public object retention  # the replay and return windows (core_ext/retention.py)
    # Partitions (core_ext/partitions.py): the first transaction id of a fresh ledger (the partition
    # in its top bits), and the bank of shared counters (None: every counter is this ledger's own).
    cdef public long long first_txn_id
    cdef public object escrow

    cdef object _apply_one(self, _Batch batch, op)
