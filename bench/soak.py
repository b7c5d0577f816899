"""Does the ledger's size level off under load? The stream load for a long time, the ledger sampled.

    python -m bench.soak [--minutes 30] [--sample-s 60] [--concurrency 4] [--batch-size 500]
                         [--window 2] [--workers 2] [--accounts 100000] [--json FILE]

Starts a server (temporary ledger, the sample program, `--accounts` accounts) with the retention
windows, the compaction and the journal archive shortened to minutes (SOAK_SETTINGS below: what a
ledger keeps for days in production, it keeps here for minutes), drives it with StreamEvents
purchases at the machine's top rate, and every `--sample-s` prints one JSON line: the minute, the
purchases acknowledged so far, the ledger's file size, its live bytes (pages LMDB holds for records;
the rest of the file is free pages it reuses), the archive's bytes, and the live bytes a purchase
inside the windows. At the end it stops the server, runs `kassa verify` and prints a summary:
whether the file size levelled off (its growth over the last third of the run against the first),
the live bytes a purchase inside the windows and the archive's bytes a purchase.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import lmdb

from bench.throughput import (
    REPO, SERVER_STOP_TIMEOUT_S, Traffic, _free_port, event_batch, seed_ledger, server_environment, start_server,
)
from kassa.core_ext.retention import OCCURRED_AT_AHEAD_MAX_S  # requests are forgotten this long past the return window

# The windows a production ledger keeps in days, shortened so that a soak of half an hour passes
# through several of them (config values, as environment variables; the server's own clock).
REPLAY_WINDOW_S = 120
RETURN_WINDOW_S = 300
SOAK_SETTINGS = {
    "KASSA_LEDGER_REPLAY_WINDOW_S": str(REPLAY_WINDOW_S),
    "KASSA_LEDGER_RETURN_WINDOW_S": str(RETURN_WINDOW_S),
    "KASSA_LEDGER_COMPACTION_INTERVAL_S": "20",
    "KASSA_LEDGER_ARCHIVE_INTERVAL_S": "30",
    "KASSA_LEDGER_ARCHIVE_AFTER_S": str(REPLAY_WINDOW_S),  # as in production: the replay window
    "KASSA_PROCESSING_EXPIRY_SWEEP_INTERVAL_S": "30",
}
MAP_START_BYTES = 256 * 1024**2  # the map starts small and grows by itself
MAX_DBS = 32  # named databases the sampler may open read-only (at least the ledger's own)
DRIVER_GRACE_S = 120  # seconds the drivers may take to finish after the run's end


def _drive(address: str, streams: int, batch_size: int, window: int, until: float, seed: int, accounts: int,
           prefix: str, acked) -> None:
    """One driver process: `streams` StreamEvents streams until `until` (time.time()), adding every
    acknowledged purchase to `acked` as it comes back."""
    import asyncio

    import grpc
    import uvloop

    from kassa.v1 import processing_pb2

    traffic = Traffic(seed, accounts)

    async def stream_slot(channel, slot: int) -> None:
        stream = channel.stream_stream("/kassa.v1.Processing/StreamEvents", request_serializer=bytes,
                                       response_deserializer=bytes)()
        room = asyncio.Semaphore(window)

        async def send() -> None:
            while time.time() < until:
                await room.acquire()
                await stream.write(event_batch(traffic, f"{prefix}-{slot}", batch_size))
            await stream.done_writing()

        sender = asyncio.ensure_future(send())
        while (reply := await stream.read()) is not grpc.aio.EOF:
            ok = sum(1 for ack in processing_pb2.AckBatch.FromString(reply).acks if ack.code == 0)
            with acked.get_lock():
                acked.value += ok
            room.release()
        await sender

    async def main() -> None:
        channels = [grpc.aio.insecure_channel(address) for _ in range(streams)]
        await asyncio.gather(*(stream_slot(channel, slot) for slot, channel in enumerate(channels)))
        for channel in channels:
            await channel.close()

    uvloop.run(main())


def ledger_sizes(path: Path) -> dict:
    """The ledger's file size and live bytes (pages of every database, in a short read-only look),
    and the bytes under its archive folder."""
    file_bytes = (path / "data.mdb").stat().st_size
    env = lmdb.open(str(path), readonly=True, lock=True, max_dbs=MAX_DBS, subdir=True)
    try:
        page_bytes = env.stat()["psize"]
        with env.begin() as txn:
            names = [key for key, _ in txn.cursor()]
            pages = _pages(env.stat())
            for name in names:
                try:
                    pages += _pages(txn.stat(env.open_db(name, txn=txn, create=False)))
                except lmdb.Error:
                    continue  # a key of the main database that names no database
    finally:
        env.close()
    archive = path / "archive"
    archive_bytes = sum(item.stat().st_size for item in archive.rglob("*") if item.is_file()) if archive.exists() else 0
    return {"file_bytes": file_bytes, "live_bytes": pages * page_bytes, "archive_bytes": archive_bytes}


def _pages(stat: dict) -> int:
    return stat["branch_pages"] + stat["leaf_pages"] + stat["overflow_pages"]


def levelled_off(samples: list[dict]) -> dict:
    """The file's growth over the last third of the samples against the first third: a ledger
    that sheds what it no longer needs grows less and less (ratio well under 1)."""
    third = max(1, len(samples) // 3)
    first = samples[third]["file_bytes"] - samples[0]["file_bytes"]
    last = samples[-1]["file_bytes"] - samples[-1 - third]["file_bytes"]
    return {"growth_first_third_bytes": first, "growth_last_third_bytes": last,
            "ratio": round(last / first, 3) if first else None}


def run(args) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="kassa-soak-"))
    try:
        return _soak(args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _soak(args, workdir: Path) -> dict:
    ledger_path = workdir / "ledger"
    seed_ledger(ledger_path, args.accounts)
    port = _free_port()
    environ = {**server_environment(ledger_path, port, args.workers, True), **SOAK_SETTINGS,
               "KASSA_LEDGER_MAP_SIZE_BYTES": str(MAP_START_BYTES)}
    server, _ = start_server(environ, args.workers, [])
    log_lines: list[str] = []  # the server's log, read as it comes: a full pipe would stall the server
    reader = threading.Thread(target=lambda: log_lines.extend(server.stderr), daemon=True)
    reader.start()
    context = multiprocessing.get_context("spawn")
    acked = context.Value("q", 0)
    started = time.time()
    until = started + args.minutes * 60
    drivers = [context.Process(target=_drive, args=(f"127.0.0.1:{port}", args.concurrency, args.batch_size,
                                                    args.window, until, index + 1, args.accounts, f"soak-{index}",
                                                    acked))
               for index in range(args.driver_processes)]
    samples = []
    try:
        for driver in drivers:
            driver.start()
        while time.time() < until:
            time.sleep(max(0.0, min(args.sample_s, until - time.time())))
            samples.append(_sample(ledger_path, started, acked.value, samples))
            print(json.dumps(samples[-1]), flush=True)
        for driver in drivers:
            driver.join(DRIVER_GRACE_S)
    finally:
        for driver in drivers:  # still running only if the soak itself failed
            if driver.is_alive():
                driver.terminate()
        stop_s = _stop(server)
        reader.join(SERVER_STOP_TIMEOUT_S)
    verify = subprocess.run(
        [sys.executable, "-m", "kassa.server.cli", "verify", "--config", str(REPO / "config" / "kassa.toml")],
        cwd=REPO, env=environ, capture_output=True, text=True)
    final = samples[-1]
    return {"minutes": args.minutes, "workers": args.workers, "purchases": acked.value,
            "purchases_per_min": round(acked.value / args.minutes), "settings": SOAK_SETTINGS,
            "samples": samples, "levelled_off": levelled_off(samples),
            "live_bytes_per_purchase_in_windows": final["live_bytes_per_purchase_in_windows"],
            "archive_bytes_per_purchase": round(final["archive_bytes"] / acked.value, 1) if acked.value else None,
            "server_stop_s": stop_s, "log_events": _events(log_lines),
            "verify_ok": verify.returncode == 0, "verify_output": (verify.stdout + verify.stderr)[-2000:]}


def _stop(server) -> float | None:
    """SIGTERM, and the seconds the server took to exit (None: it did not within SERVER_STOP_TIMEOUT_S,
    and was killed)."""
    started = time.monotonic()
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(SERVER_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()
        return None
    return round(time.monotonic() - started, 2)


def _events(log_lines: list[str]) -> dict[str, int]:
    """How many times the server logged each lifecycle event (compaction, archive, map growth, failures)."""
    counts: dict[str, int] = {}
    for line in log_lines:
        try:
            message = json.loads(line).get("msg", "")
        except ValueError:
            continue
        if any(word in message for word in ("compaction", "archive", "map", "failed", "sweep")):
            counts[message] = counts.get(message, 0) + 1
    return counts


def _sample(ledger_path: Path, started: float, purchases: int, before: list[dict]) -> dict:
    """One line of the soak: sizes now, and the live bytes a purchase made inside the return window
    and its margin (the longest any purchase's records stay), counting purchases from the last sample before it."""
    at_s = time.time() - started
    sizes = ledger_sizes(ledger_path)
    older = [sample["purchases"] for sample in before if sample["at_s"] <= at_s - RETURN_WINDOW_S - OCCURRED_AT_AHEAD_MAX_S]
    in_window = purchases - (older[-1] if older else 0)
    per_purchase = round(sizes["live_bytes"] / in_window, 1) if in_window else None
    return {"minute": round(at_s / 60, 2), "at_s": round(at_s, 1), "purchases": purchases, **sizes,
            "live_bytes_per_purchase_in_windows": per_purchase}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--sample-s", type=float, default=60.0, help="seconds between samples")
    parser.add_argument("--concurrency", type=int, default=4, help="streams per driver process")
    parser.add_argument("--driver-processes", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=500, help="purchases per stream message")
    parser.add_argument("--window", type=int, default=2, help="stream messages in flight per stream")
    parser.add_argument("--workers", type=int, default=2, help="server processes")
    parser.add_argument("--accounts", type=int, default=100_000)
    parser.add_argument("--json", type=Path, help="write the result here")
    args = parser.parse_args(argv)
    result = run(args)
    summary = {key: value for key, value in result.items() if key != "samples"}
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["verify_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
