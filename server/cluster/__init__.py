"""The cluster layer (issue 19, DESIGN §8): a partition replicated through NATS JetStream.

A partition is the unit of ownership and replication. Its owner holds a lease in a JetStream
key-value bucket (`lease`), appends each commit group to the partition's subject of a replicated
stream (`partition_log`), and applies it to its LMDB ledger after the quorum acknowledged it.
Followers apply the same groups in the same order (`replica`) and reach the same ledger, which
`digest` shows; `owner` ties lease, log and replica together; `snapshot` stores a partition's LMDB
copy in the JetStream object store so a new replica starts from it. `streams` names and creates
the JetStream objects, `group_record` is the wire format of a logged group.

Nothing here runs unless the config has a `[cluster]` section; a single node uses none of it.
"""
