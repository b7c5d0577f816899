"""The ledger's LMDB map grows by itself, in steps, up to a limit, in every worker process.

LMDB maps the data file into memory at a fixed size, the map: a write that needs a page past it
fails with MDB_MAP_FULL and its whole transaction is aborted. `GrowingEnvironment` wraps the
environment so that such a write is retried in a larger map, following liblmdb's rules for
`mdb_env_set_mapsize` (py-lmdb's `Environment.set_mapsize`):

- Resizing remaps the file, so it may run only while no transaction of this process is open:
  py-lmdb invalidates the open ones, and a read on another thread (the event loop reads while the
  commit thread writes) would fail. Every transaction therefore begins through `begin`, which
  counts it in a gate; a resize closes the gate, waits until the open transactions have ended,
  remaps, and opens the gate again. It takes microseconds, plus the time the open ones need to end.
- Only increases are persisted, by the next write transaction this process commits. Another
  process that opened the ledger keeps its own map: when the data it would read lies past it, its
  `begin` fails with MDB_MAP_RESIZED, and `set_mapsize(0)` adopts the size stored in the file
  before the begin is retried. A write that runs into a map smaller than the stored size adopts
  that first, and grows only when the stored size is no larger.
- Opening with a smaller map than the file's uses the larger of the given size and the bytes in
  use, not the stored size: opening adopts the stored size too, so a restart with the starting
  size keeps the grown map, and `kassa verify` and `kassa backup` read a grown ledger.

Each step doubles the map, up to `ledger.map_size_bytes_max` and up to what the disk holds: the data
file, plus the free space, less `ledger.disk_reserve_bytes`. Past both, the write is refused
(RESOURCE_EXHAUSTED, naming the limit that was reached) and nothing of it is written.
"""

from __future__ import annotations

import logging
import mmap
import os
import threading

import lmdb

log = logging.getLogger("kassa.ledger")

MAP_GROWTH_FACTOR = 2  # each step multiplies the map by this
PAGE_BYTES = mmap.PAGESIZE  # a map size is a whole number of OS pages
ADOPT_ATTEMPTS_MAX = 8  # begins retried after MDB_MAP_RESIZED (each after adopting a larger size)
DRAIN_WAIT_S_MAX = 60.0  # a resize waits this long at most for this process's open transactions
DATA_FILE = "data.mdb"


class MapSizeMaxReached(lmdb.MapFullError):
    """The map is full and at `ledger.map_size_bytes_max`: it may not grow."""


class DiskReserveReached(lmdb.DiskError):
    """The map is full and cannot grow without taking the disk's reserve."""


class _Depth(threading.local):
    depth = 0  # this thread's open transactions


class _Gate:
    """Transactions open in this process (shared, re-entrant per thread) against a resize
    (exclusive). A resize, once waiting, holds back new transactions, so reads cannot starve it."""

    def __init__(self):
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._open = 0  # threads inside at least one transaction
        self._resizing = False
        self._local = _Depth()

    def enter(self) -> None:
        local = self._local
        if not local.depth:  # a thread inside a transaction already may not wait: the resize waits for it
            with self._lock:
                while self._resizing:
                    self._changed.wait()
                self._open += 1
        local.depth += 1

    def leave(self) -> None:
        local = self._local
        local.depth -= 1
        if not local.depth:
            with self._lock:
                self._open -= 1
                if self._resizing and not self._open:
                    self._changed.notify_all()

    def close(self) -> None:
        """Wait until no other transaction is open and hold new ones back, until `reopen`."""
        if self._local.depth:
            raise RuntimeError("the ledger map cannot be resized from inside a transaction")
        with self._lock:
            while self._resizing:
                self._changed.wait()
            self._resizing = True
            if not self._changed.wait_for(lambda: not self._open, DRAIN_WAIT_S_MAX):
                self._resizing = False
                self._changed.notify_all()
                raise TimeoutError(f"ledger transactions stayed open for {DRAIN_WAIT_S_MAX} s during a map resize")

    def reopen(self) -> None:
        with self._lock:
            self._resizing = False
            self._changed.notify_all()


class _Transaction:
    """`with environment.begin() as txn:` a py-lmdb transaction, counted open in the gate."""

    __slots__ = ("_environment", "_write", "_txn")

    def __init__(self, environment, write):
        self._environment = environment
        self._write = write
        self._txn = None

    def __enter__(self):
        self._txn = self._environment._begin_counted(self._write)
        return self._txn

    def __exit__(self, kind, error, trace):
        try:
            return self._txn.__exit__(kind, error, trace)  # commits, or aborts after an error
        finally:
            self._txn = None
            self._environment._gate.leave()

    def __getattr__(self, name):
        """Inside `with`, the transaction's own methods (for tools that hold it as `raw_transaction`)."""
        return getattr(self._txn, name)


class GrowingEnvironment:
    """An LMDB environment whose map grows by itself; `begin` and the environment's own calls go
    through a gate that a resize closes."""

    def __init__(self, env, map_size_bytes_max: int = 0, disk_reserve_bytes: int = 0):
        """`map_size_bytes_max` 0: the map stays at the size it was opened with (or the file's)."""
        self.env = env
        self._gate = _Gate()
        self._data_path = os.path.join(env.path(), DATA_FILE)
        self._disk_reserve_bytes = disk_reserve_bytes
        self._refused_at_bytes = 0  # the map size at the last refusal logged (one line per size)
        self._adopt()
        self._max_bytes = max(map_size_bytes_max, self.map_bytes())

    def map_bytes(self) -> int:
        """Not counted in the gate: for the resize itself, and before any transaction."""
        return self.env.info()["map_size"]

    def begin(self, write: bool = False) -> _Transaction:
        return _Transaction(self, write)

    def _begin_counted(self, write: bool):
        for _ in range(ADOPT_ATTEMPTS_MAX):
            self._gate.enter()
            try:
                return self.env.begin(write=write)
            except lmdb.MapResizedError:  # another process grew the map and wrote past ours
                self._gate.leave()
            except BaseException:
                self._gate.leave()
                raise
            self._resize(self._adopt)
        raise lmdb.MapResizedError(f"the ledger map kept growing: {ADOPT_ATTEMPTS_MAX} begins in a row found it larger")

    def grow(self):
        """After a write failed with MDB_MAP_FULL (its transaction aborted): a larger map, the
        stored one or the next step. None when it grew; else the error to answer (the limit)."""
        try:
            return self._resize(self._grow)
        except TimeoutError as error:  # a transaction of this process stays open: refuse, do not wait on
            return lmdb.MapFullError(f"the map could not grow: {error}")

    def _resize(self, how):
        self._gate.close()
        try:
            return how()
        finally:
            self._gate.reopen()

    def _adopt(self) -> bool:
        """Take the map size stored in the file when it is larger than ours; True if it was."""
        ours = self.map_bytes()
        self.env.set_mapsize(0)  # the stored size, at least the bytes in use
        stored = self.map_bytes()
        if stored > ours:
            log.info("ledger map adopted", extra={"fields": {"from_bytes": ours, "to_bytes": stored}})
            return True
        if stored < ours:  # ours grew and is not stored yet: keep it
            self.env.set_mapsize(ours)
        return False

    def _grow(self):
        if self._adopt():  # another worker grew it already
            return None
        ours = self.map_bytes()
        disk_bytes = self._disk_limit_bytes()
        target = min(ours * MAP_GROWTH_FACTOR, self._max_bytes, disk_bytes)
        target -= target % PAGE_BYTES
        if target > ours:
            self.env.set_mapsize(target)
            log.info("ledger map grown", extra={"fields": {"from_bytes": ours, "to_bytes": target}})
            return None
        if disk_bytes < self._max_bytes:
            refusal = DiskReserveReached(
                f"the map cannot grow past {ours} bytes: the disk under ledger.path has "
                f"{disk_bytes - ours + self._disk_reserve_bytes} bytes free, of which ledger.disk_reserve_bytes "
                f"= {self._disk_reserve_bytes} stay free; free space there")
        else:
            refusal = MapSizeMaxReached(f"the map is at ledger.map_size_bytes_max = {self._max_bytes} bytes")
        if ours != self._refused_at_bytes:
            self._refused_at_bytes = ours
            log.warning("ledger map at its limit", extra={"fields": {"map_bytes": ours, "reason": str(refusal)}})
        return refusal

    def limit_bytes(self) -> int:
        """The most the map can grow to now: its maximum, or what the disk holds less the reserve
        (never below the map's size now: it does not shrink)."""
        return max(min(self._max_bytes, self._disk_limit_bytes()), self.info()["map_size"])

    def _disk_limit_bytes(self) -> int:
        """The largest map the disk holds: the data file, plus the free space, less the reserve."""
        disk = os.statvfs(self._data_path)
        return os.stat(self._data_path).st_size + disk.f_bavail * disk.f_frsize - self._disk_reserve_bytes

    # -- the environment's own calls, counted like transactions (py-lmdb refuses them mid-resize)

    def _counted(self, call, *args, **options):
        self._gate.enter()
        try:
            return call(*args, **options)
        finally:
            self._gate.leave()

    def info(self) -> dict:
        return self._counted(self.env.info)

    def stat(self) -> dict:
        return self._counted(self.env.stat)

    def sync(self, force: bool = False) -> None:
        self._counted(self.env.sync, force)

    def reader_check(self) -> int:
        return self._counted(self.env.reader_check)

    def copy(self, path: str, compact: bool = False) -> None:
        for _ in range(ADOPT_ATTEMPTS_MAX):
            try:
                return self._counted(self.env.copy, path, compact=compact)
            except lmdb.MapResizedError:
                self._resize(self._adopt)
        raise lmdb.MapResizedError(f"the ledger map kept growing: {ADOPT_ATTEMPTS_MAX} copies in a row found it larger")

    def open_db(self, *args, **options):
        return self.env.open_db(*args, **options)

    def path(self) -> str:
        return self.env.path()

    def close(self) -> None:
        self.env.close()
