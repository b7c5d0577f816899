"""End-to-end throughput of a real kassa server, beside a no-op baseline on the same transport.

    python -m bench.throughput --mode stream --duration 20 --concurrency 4 --workers 2 --json out.json

Starts a server (temp ledger, the sample program, `--accounts` accounts seeded before it starts),
drives it from `--driver-processes` client processes with pre-serialised requests (so the driver
does not measure itself), warms up, measures, stops the server, runs `kassa verify` on the ledger,
prints a table and writes the JSON result. On a machine with cores to spare, `--server-cpus 0-3`
keeps the server on CPUs 0-3 and the driver off them: the way to measure how kassa scales with
`--workers`. Modes:

  unary        Calculate + Accrue per purchase, C calls in flight in total; latency per call
  batch        ProcessBatch of --batch-size accrues, C calls in flight
  stream       StreamEvents, C streams, --batch-size purchases per message, --window messages
               in flight per stream
  noop-unary   Bench.NoopAccrue: the unary baseline (same request bytes, empty answer)
  noop-stream  Bench.NoopStream: the stream baseline (same messages, one bare ack per event)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kassa.server.cpus import usable_cpus

REPO = Path(__file__).resolve().parent.parent
MODES = ("unary", "batch", "stream", "noop-unary", "noop-stream")
SERVER_START_TIMEOUT_S = 60  # seconds
SERVER_STOP_TIMEOUT_S = 60  # seconds
RECEIPT_POOL_SIZE = 2000  # distinct receipts the driver cycles through
CUSTOMER_SAMPLE_SIZE = 200_000  # pre-drawn customers per driver process
CPUS_MAX = 4096  # CPU numbers in --server-cpus and --driver-cpus are below this
SEED_CHUNK_OPS = 10_000  # accounts created per ledger transaction while seeding
CATEGORIES = ("grocery/dairy/milk", "grocery/bakery", "pharmacy/vitamins", "flowers/roses", "home/kitchen",
              "electronics/cables", "tobacco")


# ---------------------------------------------------------------------------------------------
# Wire bytes built by hand: concatenated protobuf fields are a valid message.


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def account_id(index: int) -> str:
    return f"B{index:07d}"


class Traffic:
    """Pre-serialised purchases: receipts of 1-10 lines, customers skewed like real traffic
    (a few regulars buy often: a power law over the account indices)."""

    def __init__(self, seed: int, accounts: int):
        from kassa.v1 import common_pb2

        rng = random.Random(seed)
        # Each as an AccrueRequest's field (customer = 2, receipt = 3) and a CalculateRequest's (1, 2).
        self.receipts, self.calculate_receipts = [], []
        self.customers, self.calculate_customers = [], []
        for number in range(RECEIPT_POOL_SIZE):
            lines = []
            for line_no in range(1, rng.randint(1, 10) + 1):
                qty_milli = rng.choice((1000, 1000, 2000, 3000, 1500, 250))
                price_minor = rng.randint(50, 50_000)
                category = rng.choice(CATEGORIES)
                lines.append(common_pb2.Line(
                    line_no=line_no, sku=f"SKU-{rng.randint(1, 5000)}", category=category,
                    qty_milli=qty_milli, price_minor=price_minor, amount_minor=qty_milli * price_minor // 1000,
                    no_earn=category == "tobacco", no_discount=category == "tobacco"))
            receipt = common_pb2.Receipt(store_id=f"store-{rng.randint(1, 2000)}", terminal_id="t1",
                                         receipt_no=str(number), lines=lines).SerializeToString()
            self.receipts.append(_field(3, receipt))
            self.calculate_receipts.append(_field(2, receipt))
        for _ in range(CUSTOMER_SAMPLE_SIZE):
            customer = common_pb2.Customer(
                account_id=account_id(min(accounts - 1, int(accounts * rng.random() ** 3)))).SerializeToString()
            self.customers.append(_field(2, customer))
            self.calculate_customers.append(_field(1, customer))
        self.rng = rng
        self.sequence = 0

    def accrue(self, prefix: str) -> tuple[bytes, bytes]:
        """(request_id field, customer and receipt fields) of a fresh purchase."""
        request_id, customer, receipt = self._draw(prefix)
        return request_id, self.customers[customer] + self.receipts[receipt]

    def accrue_request(self, prefix: str) -> bytes:
        request_id, body = self.accrue(prefix)
        return request_id + body

    def checkout(self, prefix: str) -> tuple[bytes, bytes]:
        """(CalculateRequest, AccrueRequest) of a fresh purchase: one customer and receipt."""
        request_id, customer, receipt = self._draw(prefix)
        return (self.calculate_customers[customer] + self.calculate_receipts[receipt],
                request_id + self.customers[customer] + self.receipts[receipt])

    def _draw(self, prefix: str) -> tuple[bytes, int, int]:
        self.sequence += 1
        request_id = f"{prefix}-{self.sequence}".encode()
        return _field(1, request_id), self.sequence % len(self.customers), self.rng.randrange(len(self.receipts))


def event_batch(traffic: Traffic, prefix: str, size: int) -> bytes:
    """EventBatch bytes: `size` purchase events, event_id = request_id left empty (taken from it)."""
    parts = []
    for _ in range(size):
        traffic.sequence += 1
        event_id = f"{prefix}-{traffic.sequence}".encode()
        body = traffic.customers[traffic.sequence % len(traffic.customers)] + traffic.receipts[
            traffic.rng.randrange(len(traffic.receipts))]
        parts.append(_field(1, _field(1, event_id) + _field(3, body)))
    return b"".join(parts)


def batch_request(traffic: Traffic, prefix: str, size: int) -> bytes:
    """ProcessBatchRequest bytes: `size` accrue operations."""
    return b"".join(_field(1, _field(1, traffic.accrue_request(prefix))) for _ in range(size))


# ---------------------------------------------------------------------------------------------
# Driver processes


def _identity(data: bytes) -> bytes:
    return data


async def _drive(mode: str, address: str, slots: int, batch_size: int, window: int, warmup_s: float,
                 duration_s: float, seed: int, accounts: int, prefix: str, ready=None) -> dict:
    import grpc

    from kassa.v1 import processing_pb2

    traffic = Traffic(seed, accounts)
    # One connection per slot: SO_REUSEPORT spreads connections, not calls, over the workers.
    channels = [
        grpc.aio.insecure_channel(
            address,
            options=[("grpc.max_receive_message_length", 64 * 1024 * 1024), ("grpc.use_local_subchannel_pool", 1)],
        )
        for _ in range(slots)
    ]
    if ready is not None:  # every driver process starts its clock together, after its traffic is built
        ready.wait()
    start = time.perf_counter()
    measure_from = start + warmup_s
    measure_to = measure_from + duration_s
    latencies_ms: list[float] = []
    counters = {"purchases": 0, "calls": 0, "failed": 0}

    def record(sent: float, done: float, purchases: int, calls: int) -> None:
        if sent >= measure_from and done <= measure_to:
            latencies_ms.append((done - sent) * 1000)
            counters["purchases"] += purchases
            counters["calls"] += calls

    def unary(slot: int, method: str):
        return channels[slot].unary_unary(method, request_serializer=_identity, response_deserializer=_identity)

    async def unary_slot(slot: int) -> None:
        accrue = unary(slot, "/kassa.v1.Processing/Accrue")
        calculate = unary(slot, "/kassa.v1.Processing/Calculate")
        noop = unary(slot, "/kassa.v1.Bench/NoopAccrue")
        while time.perf_counter() < measure_to:
            try:
                if mode == "noop-unary":
                    request = traffic.accrue_request(f"{prefix}-{slot}")
                    sent = time.perf_counter()
                    await noop(request)
                    record(sent, time.perf_counter(), 1, 1)
                    continue
                calculate_request, accrue_request = traffic.checkout(f"{prefix}-{slot}")
                sent = time.perf_counter()
                await calculate(calculate_request)
                between = time.perf_counter()
                record(sent, between, 0, 1)
                await accrue(accrue_request)
                record(between, time.perf_counter(), 1, 1)
            except grpc.aio.AioRpcError:
                counters["failed"] += 1

    async def batch_slot(slot: int) -> None:
        call = unary(slot, "/kassa.v1.Processing/ProcessBatch")
        while time.perf_counter() < measure_to:
            request = batch_request(traffic, f"{prefix}-{slot}", batch_size)
            sent = time.perf_counter()
            reply = processing_pb2.ProcessBatchResponse.FromString(await call(request))
            ok = sum(1 for result in reply.results if result.code == 0)
            counters["failed"] += len(reply.results) - ok
            record(sent, time.perf_counter(), ok, 1)

    async def stream_slot(slot: int) -> None:
        method = "/kassa.v1.Bench/NoopStream" if mode == "noop-stream" else "/kassa.v1.Processing/StreamEvents"
        stream = channels[slot].stream_stream(method, request_serializer=_identity, response_deserializer=_identity)()
        sent_times: asyncio.Queue = asyncio.Queue()
        room = asyncio.Semaphore(window)

        async def send() -> None:
            while time.perf_counter() < measure_to:
                await room.acquire()
                message = event_batch(traffic, f"{prefix}-{slot}", batch_size)
                await sent_times.put(time.perf_counter())
                await stream.write(message)
            await stream.done_writing()

        sender = asyncio.ensure_future(send())
        while True:
            reply = await stream.read()
            if reply is grpc.aio.EOF:
                break
            acks = processing_pb2.AckBatch.FromString(reply)
            ok = sum(1 for ack in acks.acks if ack.code == 0)
            counters["failed"] += len(acks.acks) - ok
            record(await sent_times.get(), time.perf_counter(), ok, 1)
            room.release()
        await sender

    slot_kind = {"unary": unary_slot, "noop-unary": unary_slot, "batch": batch_slot,
                 "stream": stream_slot, "noop-stream": stream_slot}[mode]
    await asyncio.gather(*(slot_kind(slot) for slot in range(slots)))
    for channel in channels:
        await channel.close()
    return {**counters, "latencies_ms": latencies_ms}


def _driver_main(arguments: dict, cpus: list[int], results, ready) -> None:
    import uvloop

    if cpus:
        os.sched_setaffinity(0, cpus)
    results.put({**uvloop.run(_drive(**arguments, ready=ready)), "cpus": sorted(os.sched_getaffinity(0))})


def drive(args, address: str, driver_cpus: list[int], prefix: str, sample=None) -> tuple[list[dict], list]:
    """Drive `address` from driver processes as `args` say (mode, concurrency, warm-up, duration);
    the drivers' parts. With `sample`, it is called when the measured window opens and when it
    closes (the drivers start their clocks together), and the two values are returned."""
    processes = args.driver_processes or min(args.concurrency, len(driver_cpus) or os.cpu_count() or 1)
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    counts = [args.concurrency // processes + (1 if index < args.concurrency % processes else 0)
              for index in range(processes)]
    counts = [slots for slots in counts if slots]
    ready = context.Barrier(len(counts) + 1)
    drivers = []
    for index, slots in enumerate(counts):
        arguments = dict(mode=args.mode, address=address, slots=slots, batch_size=args.batch_size,
                         window=args.window, warmup_s=args.warmup, duration_s=args.duration,
                         seed=args.seed + index, accounts=args.accounts, prefix=f"{prefix}-d{index}")
        driver = context.Process(target=_driver_main, args=(arguments, driver_cpus, results, ready))
        driver.start()
        drivers.append(driver)
    ready.wait(SERVER_START_TIMEOUT_S)
    started = time.perf_counter()
    samples = []
    if sample is not None:
        time.sleep(args.warmup)
        samples.append(sample([driver.pid for driver in drivers]))
        time.sleep(max(0.0, started + args.warmup + args.duration - time.perf_counter()))
        samples.append(sample([driver.pid for driver in drivers]))
    parts = [results.get(timeout=args.warmup + args.duration + 120) for _ in drivers]
    for driver in drivers:
        driver.join()
    return parts, samples


# ---------------------------------------------------------------------------------------------
# Server


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def seed_ledger(path: Path, accounts: int, partitions: int = 1) -> None:
    from kassa.core_ext import Ledger, Program, load_program
    from kassa.core_ext.model import CreateAccountOp
    from kassa.core_ext.partitions import PartitionedLedger, home_partition

    program = Program(load_program([REPO / "config" / "rules"]))
    if partitions == 1:
        ledger, writers = Ledger(str(path), program, 8 * 1024**3, 900), None
    else:  # each account into its partition, through its writer (which records it in the directory)
        ledger = PartitionedLedger(str(path), program, 8 * 1024**3, 900, partitions=partitions)
        writers = ledger.writers
    now_ms = time.time_ns() // 1_000_000
    for first in range(0, accounts, SEED_CHUNK_OPS):
        ops = [CreateAccountOp(f"seed-{i}", b"seed", account_id(i)) for i in range(first, min(accounts, first + SEED_CHUNK_OPS))]
        groups = {0: ops} if writers is None else {}
        for op in ops if writers is not None else ():
            groups.setdefault(home_partition(op.account_id, partitions), []).append(op)
        for index, group in groups.items():
            for outcome in (ledger if writers is None else writers[index]).apply(group, now_ms):
                assert outcome.code == 0, outcome
    ledger.close()


def server_environment(ledger_path: Path, port: int, workers: int, sync: bool, partitions: int = 1) -> dict[str, str]:
    return {
        **os.environ,
        "KASSA_LEDGER_PARTITIONS": str(partitions),
        "KASSA_SERVER_LISTEN": f"127.0.0.1:{port}",
        "KASSA_SERVER_WORKERS": str(workers),
        "KASSA_SERVER_BENCH_NOOP": "true",
        "KASSA_LEDGER_PATH": str(ledger_path),
        "KASSA_LEDGER_MAP_SIZE_BYTES": str(8 * 1024**3),
        "KASSA_LEDGER_SYNC": "true" if sync else "false",
        "KASSA_RULES_PATHS": str(REPO / "config" / "rules"),
    }


def cpu_list(text: str) -> list[int]:
    """CPUs written as `taskset -c` takes them: "0-3", "0,2,4", "0-3,8-11"."""
    cpus: set[int] = set()
    for part in text.split(","):
        first, dash, last = part.strip().partition("-")
        last = last if dash else first
        if not first.isdigit() or not last.isdigit() or int(first) > int(last):
            raise argparse.ArgumentTypeError(f"{part!r} is not a CPU or a range of CPUs like 0-3")
        if int(last) >= CPUS_MAX:
            raise argparse.ArgumentTypeError(f"{part!r}: CPUs are numbered below {CPUS_MAX}")
        cpus.update(range(int(first), int(last) + 1))
    return sorted(cpus)


def count_list(text: str) -> list[int]:
    """Counts of at least 1, comma-separated: "1,2,4,8"."""
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of counts") from None
    if min(counts) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: every count must be at least 1")
    return counts


def split_cpus(server_cpus: list[int], driver_cpus: list[int]) -> tuple[list[int], list[int]]:
    """(the server's CPUs, the driver's): with `--server-cpus` the two never share a CPU (the
    driver's default: all the others), so that a run on a bigger machine measures the server's
    scaling, not the driver's; without, both may run everywhere (empty lists: not pinned)."""
    if not server_cpus:
        if driver_cpus:
            raise SystemExit("--driver-cpus needs --server-cpus")
        return [], []
    usable = usable_cpus()
    for flag, cpus in (("--server-cpus", server_cpus), ("--driver-cpus", driver_cpus)):
        if not set(cpus) <= set(usable):
            raise SystemExit(f"{flag}: {cpus} are not all among the usable CPUs {usable}")
    driver_cpus = driver_cpus or [cpu for cpu in usable if cpu not in server_cpus]
    if not driver_cpus:
        raise SystemExit(f"--server-cpus: {server_cpus} leave no CPU for the load driver")
    if set(server_cpus) & set(driver_cpus):
        raise SystemExit(f"--server-cpus {server_cpus} and --driver-cpus {driver_cpus} overlap")
    return server_cpus, driver_cpus


def start_server(environ: dict[str, str], workers: int, cpus: list[int]) -> tuple[subprocess.Popen, list[list[int]]]:
    """Start kassa; with `cpus`, on those alone (its supervisor then shares them out to the workers).
    Returns the server and the CPUs each worker says it may run on, by worker."""
    command = [sys.executable, "-m", "kassa.server.cli", "serve", "--config", str(REPO / "config" / "kassa.toml")]
    server = subprocess.Popen(command, cwd=REPO, env=environ, stderr=subprocess.PIPE, text=True,
                              preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)
    serving: dict[int, list[int]] = {}
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while len(serving) < workers and time.monotonic() < deadline:
        line = server.stderr.readline()
        if not line:
            raise RuntimeError("kassa exited before serving")
        if '"msg":"serving"' in line:
            event = json.loads(line)
            serving[event["worker"]] = event["cpus"]
    if len(serving) < workers:
        raise RuntimeError(f"kassa: {len(serving)} of {workers} workers serving after {SERVER_START_TIMEOUT_S}s")
    return server, [serving[worker] for worker in sorted(serving)]


def commit_counts(server_log: str) -> dict:
    """Group commits over the whole run, warm-up included, summed from the workers' `stopped` lines."""
    groups = operations = 0
    for line in server_log.splitlines():
        if '"msg":"stopped"' in line:
            stopped = json.loads(line)
            groups += stopped["groups_committed"]
            operations += stopped["ops_committed"]
    return {"groups": groups, "operations": operations,
            "operations_per_group": round(operations / groups, 1) if groups else 0.0}


def percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(fraction * len(sorted_values)))]


def run(args) -> dict:
    """One measured run on a fresh ledger in a temporary directory, removed afterwards (a run of
    a few minutes leaves hundreds of MB) unless `--keep-ledger`."""
    workdir = Path(tempfile.mkdtemp(prefix="kassa-bench-"))
    try:
        return _measure(args, workdir)
    finally:
        if args.keep_ledger:
            print(f"ledger kept at {workdir / 'ledger'}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _measure(args, workdir: Path) -> dict:
    server_cpus, driver_cpus = split_cpus(args.server_cpus, args.driver_cpus)
    ledger_path = workdir / "ledger"
    seed_ledger(ledger_path, args.accounts, args.partitions)
    port = _free_port()
    environ = server_environment(ledger_path, port, args.workers, not args.no_sync, args.partitions)
    server, worker_cpus = start_server(environ, args.workers, server_cpus)
    try:
        parts, _ = drive(args, f"127.0.0.1:{port}", driver_cpus, args.mode)
    finally:
        server.send_signal(signal.SIGTERM)
        _, server_log = server.communicate(timeout=SERVER_STOP_TIMEOUT_S)
    verify = subprocess.run(
        [sys.executable, "-m", "kassa.server.cli", "verify", "--config", str(REPO / "config" / "kassa.toml")],
        cwd=REPO, env=environ, capture_output=True, text=True)
    result = {
        "mode": args.mode,
        "workers": args.workers,
        "partitions": args.partitions,
        "concurrency": args.concurrency,
        **summarize(args, parts),
        "durable": not args.no_sync,
        "verify_ok": verify.returncode == 0,
        "batch_size": args.batch_size if args.mode in ("batch", "stream", "noop-stream") else 1,
        "window": args.window if args.mode in ("stream", "noop-stream") else 1,
        "driver_processes": len(parts),
        "cpu_count": os.cpu_count(),
        "server_cpus": server_cpus,
        "worker_cpus": worker_cpus,
        "driver_cpus": sorted({cpu for part in parts for cpu in part["cpus"]}),  # as the drivers saw them
        "commits": commit_counts(server_log),
    }
    if verify.returncode != 0:
        result["verify_output"] = verify.stdout[-2000:] + verify.stderr[-2000:]
    return result


def summarize(args, parts: list[dict]) -> dict:
    """What the drivers measured, together: purchases a minute, calls a second, latencies, failures."""
    latencies = sorted(value for part in parts for value in part["latencies_ms"])
    purchases = sum(part["purchases"] for part in parts)
    calls = sum(part["calls"] for part in parts)
    return {
        "duration_s": args.duration,
        "purchases": purchases,
        "purchases_per_min": round(purchases * 60 / args.duration),
        "calls_per_s": round(calls / args.duration, 1),
        "latency_ms": {
            "p50": round(percentile(latencies, 0.50), 3),
            "p99": round(percentile(latencies, 0.99), 3),
            "max": round(latencies[-1] if latencies else 0.0, 3),
        },
        "failed": sum(part["failed"] for part in parts),
    }


def print_table(results: list[dict]) -> None:
    header = f"{'mode':<12} {'workers':>7} {'P':>3} {'conc':>5} {'batch':>6} {'purchases/min':>14} {'calls/s':>9} " \
             f"{'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'ops/commit':>10} {'durable':>7} {'verify':>6}"
    print(header)
    print("-" * len(header))
    for r in results:
        print(f"{r['mode']:<12} {r['workers']:>7} {r.get('partitions', 1):>3} {r['concurrency']:>5} {r['batch_size']:>6} "
              f"{r['purchases_per_min']:>14,} {r['calls_per_s']:>9,.0f} {r['latency_ms']['p50']:>8.2f} "
              f"{r['latency_ms']['p99']:>8.2f} {r['latency_ms']['max']:>8.2f} "
              f"{r['commits']['operations_per_group'] if r.get('commits', {}).get('groups') else '-':>10} "
              f"{str(r['durable']):>7} "
              f"{'ok' if r['verify_ok'] else 'FAIL':>6}")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=MODES, required=True)
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds before measuring")
    parser.add_argument("--concurrency", type=int, default=64, help="calls (unary, batch) or streams in flight")
    parser.add_argument("--workers", type=int, default=1, help="server processes")
    parser.add_argument("--partitions", type=int, default=1, help="ledger.partitions: LMDB environments, a writer each")
    parser.add_argument("--batch-size", type=int, default=500, help="purchases per ProcessBatch call or stream message")
    parser.add_argument("--window", type=int, default=4, help="stream messages in flight per stream")
    parser.add_argument("--accounts", type=int, default=100_000)
    parser.add_argument("--driver-processes", type=int, default=0,
                        help="0: min(concurrency, the driver's CPUs)")
    parser.add_argument("--server-cpus", type=cpu_list, default=[],
                        help="run the server on these CPUs (e.g. 0-3) and the driver on the others; "
                             "default: both anywhere")
    parser.add_argument("--driver-cpus", type=cpu_list, default=[],
                        help="with --server-cpus: the driver's CPUs (default: all the others)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-sync", action="store_true", help="unsynced commits (not durable; for comparison only)")
    parser.add_argument("--json", type=Path, help="write the result here")
    parser.add_argument("--keep-ledger", action="store_true", help="keep the run's ledger (its path is printed)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    result = run(args)
    print_table([result])
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["verify_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
