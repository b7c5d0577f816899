"""The benchmark's CPU split (`bench.throughput --server-cpus/--driver-cpus`, `bench.scaling`): the
lists it takes, what it refuses, and that a real run keeps the server and the driver apart."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.scaling import main as scaling_main
from bench.scaling import speedups
from bench.throughput import CPUS_MAX, cpu_list, split_cpus
from kassa.server.cpus import usable_cpus

REPO = Path(__file__).resolve().parents[2]


def test_cpu_lists_are_read_as_taskset_writes_them():
    assert cpu_list("0") == [0]
    assert cpu_list("0-3") == [0, 1, 2, 3]
    assert cpu_list("8-9,0,2-3") == [0, 2, 3, 8, 9]
    assert cpu_list("1,1-2") == [1, 2]
    assert cpu_list(f"{CPUS_MAX - 1}") == [CPUS_MAX - 1]


@pytest.mark.parametrize("text, part", [("", ""), ("a", "a"), ("3-1", "3-1"), ("-1", "-1"), ("1-", "1-"),
                                        ("1,,2", ""), ("0,2-x", "2-x"), (f"0-{CPUS_MAX}", f"0-{CPUS_MAX}")])
def test_a_wrong_cpu_list_is_refused_naming_the_part(text, part):
    with pytest.raises(argparse.ArgumentTypeError) as refused:
        cpu_list(text)
    assert str(refused.value).startswith(repr(part))


def test_without_server_cpus_nobody_is_pinned():
    assert split_cpus([], []) == ([], [])
    with pytest.raises(SystemExit, match="--driver-cpus needs --server-cpus"):
        split_cpus([], [0])


def test_the_driver_gets_the_cpus_the_server_leaves():
    cpus = usable_cpus()
    if len(cpus) < 2:
        pytest.skip("needs two usable CPUs")
    assert split_cpus(cpus[:1], []) == (cpus[:1], cpus[1:])
    assert split_cpus(cpus[:1], cpus[-1:]) == (cpus[:1], cpus[-1:])
    with pytest.raises(SystemExit, match="leave no CPU for the load driver"):
        split_cpus(cpus, [])
    with pytest.raises(SystemExit, match="overlap"):
        split_cpus(cpus[:1], cpus[:2])
    unusable = max(cpus) + 1
    with pytest.raises(SystemExit, match=f"--server-cpus: \\[{unusable}\\] are not all among the usable CPUs"):
        split_cpus([unusable], [])
    with pytest.raises(SystemExit, match="--driver-cpus: .* are not all among the usable CPUs"):
        split_cpus(cpus[:1], [unusable])


def test_a_run_keeps_the_server_and_the_driver_apart(tmp_path):
    """A real server and driver: the worker says it may run on the server's CPU alone, the driver
    processes on the other."""
    cpus = usable_cpus()
    if len(cpus) < 2:
        pytest.skip("needs two usable CPUs")
    out = tmp_path / "run.json"
    run = subprocess.run(
        [sys.executable, "-m", "bench.throughput", "--mode", "noop-unary", "--duration", "1", "--warmup", "0.5",
         "--concurrency", "2", "--accounts", "1000", "--workers", "1", "--server-cpus", str(cpus[0]),
         "--driver-cpus", str(cpus[1]), "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    result = json.loads(out.read_text())
    assert result["server_cpus"] == [cpus[0]]
    assert result["worker_cpus"] == [[cpus[0]]]
    assert result["driver_cpus"] == [cpus[1]]
    assert result["calls_per_s"] > 0
    assert result["verify_ok"]


def test_speedups_are_against_the_fewest_workers_of_the_same_mode():
    results = [
        {"mode": "stream", "workers": 4, "calls_per_s": 30.0, "purchases_per_min": 1_800_000},
        {"mode": "stream", "workers": 1, "calls_per_s": 10.0, "purchases_per_min": 600_000},
        {"mode": "unary", "workers": 2, "calls_per_s": 500.0, "purchases_per_min": 15_000},
        {"mode": "unary", "workers": 8, "calls_per_s": 1500.0, "purchases_per_min": 45_000},
    ]
    rows = {(row["mode"], row["workers"]): row for row in speedups(results)}
    assert rows["stream", 1]["speedup"] == 1.0
    assert rows["stream", 4]["speedup"] == 3.0
    assert rows["unary", 2]["speedup"] == 1.0
    assert rows["unary", 8]["speedup"] == 3.0
    assert rows["unary", 8]["base_workers"] == 2


@pytest.mark.parametrize("argv, says", [
    (["--workers", "1,x"], "--workers: '1,x' is not a comma-separated list of counts"),
    (["--workers", "0"], "--workers: '0': every count must be at least 1"),
    (["--workers", str(len(usable_cpus()))], "the driver needs CPUs of its own"),
    (["--modes", "stream,fast"], "'fast' is not one of"),
])
def test_scaling_refuses_what_it_cannot_measure(argv, says, capsys):
    with pytest.raises(SystemExit) as stopped:
        scaling_main(argv)
    assert stopped.value.code == 2
    assert says in capsys.readouterr().err
