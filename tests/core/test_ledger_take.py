"""`Ledger.apply(ops, now_ms, take)`: the group is taken once LMDB's writer lock is held, so what
arrives while another writer holds it joins this commit (the server's group commit relies on it
with several workers). A real ledger in a temp directory; the other writer is a real write
transaction held open in another thread."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from kassa.core_ext import Ledger, Program, load_program
from kassa.core_ext.model import AccrueOp, Code, CreateAccountOp, Customer, IdKind, Line, Receipt

REPO = Path(__file__).resolve().parents[2]
MAP_SIZE_BYTES = 64 * 1024**2
HOLD_TTL_S = 900
T0_MS = 1_780_300_800_000
WAIT_S = 0.3  # how long the other writer keeps the lock while purchases arrive


def open_ledger(path: Path) -> Ledger:
    ledger = Ledger(str(path), Program(load_program([REPO / "config" / "rules"])), MAP_SIZE_BYTES, HOLD_TTL_S)
    (created,) = ledger.apply([CreateAccountOp("create/A", b"create/A", "A")], T0_MS)
    assert created.code == Code.OK
    return ledger


def purchase(number: int) -> AccrueOp:
    line = Line(1, "SKU-1", "grocery/bakery", 1000, 10_000, 10_000)
    return AccrueOp(f"buy/{number}", f"buy/{number}".encode(), Customer(IdKind.ACCOUNT, "A"),
                    Receipt("store-1", "t1", str(number), (line,)))


def test_what_arrives_while_another_writer_holds_the_lock_joins_the_group(tmp_path):
    ledger = open_ledger(tmp_path)
    held, release = threading.Event(), threading.Event()

    def other_writer() -> None:
        with ledger.env.begin(write=True):
            held.set()
            release.wait()

    queue: list[AccrueOp] = [purchase(1)]
    calls: list[tuple[float, int]] = []  # (when, how many taken)

    def take() -> tuple[list, int]:
        taken = list(queue)
        calls.append((time.monotonic(), len(taken)))
        queue.clear()
        return taken, T0_MS + 1000

    blocker = threading.Thread(target=other_writer)
    blocker.start()
    assert held.wait(10)
    ops: list = []
    outcomes: list = []
    committer = threading.Thread(target=lambda: outcomes.extend(ledger.apply(ops, 0, take)))
    committer.start()
    time.sleep(WAIT_S)
    assert calls == []  # still waiting for the lock: nothing taken yet
    queue.extend([purchase(2), purchase(3)])  # arrive meanwhile
    released_at = time.monotonic()
    release.set()
    committer.join(10)
    blocker.join(10)

    assert len(calls) == 1  # taken once,
    assert calls[0][0] >= released_at  # after the other writer let go,
    assert calls[0][1] == 3  # with what had arrived meanwhile
    assert [op.request_id for op in ops] == ["buy/1", "buy/2", "buy/3"]  # the caller sees what was taken
    assert [outcome.code for outcome in outcomes] == [Code.OK] * 3
    txn_ids = [outcome.body.transaction_id for outcome in outcomes]
    assert len(set(txn_ids)) == 3
    earned = sum(outcome.body.calculation.earned_points for outcome in outcomes)
    assert earned > 0
    balance = ledger.account(Customer(IdKind.ACCOUNT, "A"), T0_MS + 1000).body.balance
    assert balance.active + balance.pending == earned
    ledger.close()


def test_a_failing_operation_among_the_taken_stays_with_it(tmp_path):
    """An unexpected failure aborts the group; the taken operations are then applied one per
    transaction, and only the failing one is refused."""
    ledger = open_ledger(tmp_path)
    ops: list = []
    outcomes = ledger.apply(ops, 0, lambda: ([purchase(1), object(), purchase(2)], T0_MS))
    assert len(ops) == 3
    assert [outcome.code for outcome in outcomes] == [Code.OK, Code.INTERNAL, Code.OK]
    assert outcomes[1].message.startswith("internal error")
    again = ledger.apply([purchase(1), purchase(2)], T0_MS)  # both committed: retries replay them
    assert [outcome.body.transaction_id for outcome in again] == [outcomes[0].body.transaction_id, outcomes[2].body.transaction_id]
    ledger.close()
