"""Issue 18: a card (or account) committed in its partition whose directory entry never got written.

A writer records directory entries just after its partition's commit; a kill -9 between the two
leaves the partition holding a card the directory does not know. The crash is staged by applying an
IssueCard on the partition's own ledger (as the writer does, without its directory write). Then:
- `kassa verify` names the card, its partition and the missing entry;
- a server that opens the ledger puts the entry back (and logs it) before serving: an IssueCard of
  the same card to an account of another partition is ALREADY_EXISTS, an Accrue by the card credits
  the account that holds it, and verify passes.
No timings are asserted.
"""

from __future__ import annotations

import contextlib
import itertools
import time

import grpc

from kassa.core_ext import Program, load_program
from kassa.core_ext.model import CreateAccountOp, IssueCardOp
from kassa.core_ext.partitions import PartitionedLedger, home_partition
from kassa.v1 import accounts_pb2, processing_pb2
from tests.kassa_harness import REPO, START_TIMEOUT_S
from tests.reliability import assert_verifies, verify
from tests.server.helpers import balance, by_card, line, open_account, receipt, refused

PARTITIONS = 4
LEDGER_MAP_SIZE_BYTES = 256 * 1024 * 1024  # as the harness's servers
HOLD_TTL_S = 900
CARD = "K-1"
PHONE = "+15550001818"
LOST_CREATE = "create/lost"  # a server-named account with PHONE, its directory entries lost too
PURCHASE_MINOR = 10_000  # earns 500 points at the base 5 % rate


def two_accounts_in_two_partitions() -> tuple[tuple[str, int], tuple[str, int]]:
    """(account id, its home partition) of two accounts placed in different partitions."""
    first = ("DIR-A", home_partition("DIR-A", PARTITIONS))
    for number in itertools.count():
        other = f"DIR-B-{number}"
        if home_partition(other, PARTITIONS) != first[1]:
            return first, (other, home_partition(other, PARTITIONS))
    raise AssertionError("unreachable")


@contextlib.contextmanager
def open_partitioned(server):
    """The stopped server's ledger, opened in this process (to leave it as a crash would)."""
    program = Program(load_program([REPO / "config" / "rules"]))
    ledger = PartitionedLedger(str(server.ledger_path), program, LEDGER_MAP_SIZE_BYTES, HOLD_TTL_S,
                               partitions=PARTITIONS)
    try:
        yield ledger
    finally:
        ledger.close()


def commit_without_directory(server, account_id: str, partition: int) -> None:
    """The card committed in `partition`, a server-named account with a phone in its home partition,
    and their directory entries lost: kill -9 between the commits and the directory writes."""
    server.stop()
    with open_partitioned(server) as ledger:
        now_ms = int(time.time() * 1000)
        (issued,) = ledger.parts[partition].apply([IssueCardOp(f"card/{CARD}", b"\0" * 32, account_id, CARD)], now_ms)
        assert issued.code == 0, issued
        (created,) = ledger.parts[home_partition(LOST_CREATE, PARTITIONS)].apply(
            [CreateAccountOp(LOST_CREATE, b"\0" * 32, phone=PHONE)], now_ms)
        assert created.code == 0, created
        assert ledger.directory.lookup(2, CARD) is None  # 2: IdKind.CARD


def wait_serving(server) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not any('"msg":"serving"' in entry for entry in list(server.log_lines)):
        assert time.monotonic() < deadline, "".join(server.log_lines)
        time.sleep(0.05)


def staged(start_kassa):
    server = start_kassa(env={"KASSA_LEDGER_PARTITIONS": str(PARTITIONS)})
    wait_serving(server)
    (first, first_partition), (second, _) = two_accounts_in_two_partitions()
    open_account(server, first)
    open_account(server, second)
    commit_without_directory(server, first, first_partition)
    return server, first, second, first_partition


def test_verify_names_a_card_its_partition_has_and_the_directory_lacks(start_kassa):
    server, _, _, first_partition = staged(start_kassa)
    code, summary, output = verify(server)
    assert code != 0, output
    violation = [entry for entry in output.splitlines() if "the directory has no entry" in entry]
    assert len(violation) == 3, output  # the card, the account and its phone
    card = [entry for entry in violation if CARD in entry]
    assert len(card) == 1, output
    assert f"partition {first_partition} has" in card[0], output
    assert any(PHONE in entry for entry in violation), output


def test_open_puts_the_entry_back_and_the_card_stays_on_one_account(start_kassa):
    server, first, second, first_partition = staged(start_kassa)
    server.start()
    wait_serving(server)
    with refused(grpc.StatusCode.ALREADY_EXISTS):
        server.accounts.IssueCard(accounts_pb2.IssueCardRequest(request_id=f"card/{CARD}/again",
                                                                account_id=second, card=CARD))
    elsewhere = next(f"create/other-{n}" for n in itertools.count()
                     if home_partition(f"create/other-{n}", PARTITIONS) != home_partition(LOST_CREATE, PARTITIONS))
    with refused(grpc.StatusCode.ALREADY_EXISTS):
        server.accounts.CreateAccount(accounts_pb2.CreateAccountRequest(request_id=elsewhere, phone=PHONE))
    reply = server.processing.Accrue(processing_pb2.AccrueRequest(
        request_id="buy-by-card", customer=by_card(CARD), receipt=receipt(line(1, PURCHASE_MINOR))))
    assert reply.calculation.earned_points > 0
    assert balance(server, first).active_points == reply.calculation.earned_points
    assert balance(server, second).active_points == 0
    assert any("directory entries put back" in entry for entry in server.log_lines), "".join(server.log_lines)
    assert_verifies(server)
