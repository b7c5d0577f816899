"""`bench.cluster_throughput` (one node against a 3-node cluster) imports, parses its arguments and
sums its figures; the benchmark itself is not run here (it takes minutes: docs/performance.md)."""

from __future__ import annotations

import os

import pytest

from bench.cluster_throughput import cpu_seconds, log_costs, mode_args, parse_args


class TestArguments:
    def test_defaults_are_both_modes_6_s_after_2_s_and_both_single_nodes(self):
        args = parse_args([])
        assert args.modes == ["unary", "stream"]
        assert (args.duration, args.warmup) == (6.0, 2.0)
        assert args.single == "both"

    def test_an_unknown_mode_is_refused(self, capsys):
        with pytest.raises(SystemExit):
            parse_args(["--modes", "unary,batch"])
        assert "batch" in capsys.readouterr().err

    def test_each_mode_gets_its_load_unless_given(self):
        args = parse_args(["--modes", "unary,stream"])
        assert mode_args(args, "unary").concurrency == 64
        assert (mode_args(args, "stream").concurrency, mode_args(args, "stream").batch_size) == (4, 1000)
        assert mode_args(parse_args(["--concurrency", "8"]), "stream").concurrency == 8


class TestFigures:
    def test_cpu_seconds_counts_this_process(self):
        used = cpu_seconds({"me": [os.getpid()], "nobody": []})
        assert used["me"] > 0
        assert used["nobody"] == 0

    def test_the_log_cost_is_the_median_over_rounds_of_cluster_minus_single(self):
        cells = [{"mode": "stream", "round": number, "target": target, "server_cpu_us_per_purchase": cost}
                 for number, costs in ((1, (40, 30, 70)), (2, (50, 30, 90)), (3, (44, 30, 74)))
                 for target, cost in zip(("single", "single-unsynced", "owner"), costs)]
        costs = log_costs(cells)["stream"]
        assert costs["owner - single"] == 30
        assert costs["owner - single-unsynced"] == 44
