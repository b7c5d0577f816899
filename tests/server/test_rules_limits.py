"""Admin.ReloadRules with a source built to hurt the TOML parser: refused as INVALID_ARGUMENT naming
the limit, answered at once, and the ruleset serving before keeps serving."""

from __future__ import annotations

import time

import grpc
import pytest

from kassa.v1 import admin_pb2

NESTED_TOO_DEEP = 300  # levels of inline tables: past the parser's recursion limit (UNKNOWN before)
DOTTED_KEY_PARTS = 20_000  # parts of one dotted key: the parser takes tens of seconds on them
ANSWER_TIMEOUT_S = 10  # refused before parsing: well within this
PADDED = "[program]\nname = 'x'\n" + "# padding\n" * 110_000  # valid TOML, over RULES_SOURCE_BYTES_MAX


@pytest.mark.parametrize("source, said", [
    ("[program]\nname = 'x'\nx = " + "{ a = " * NESTED_TOO_DEEP + "1" + " }" * NESTED_TOO_DEEP + "\n",
     "ReloadRules.source_toml: arrays and inline tables nested more than 32 deep"),
    ("[program]\nname = 'x'\nx = " + "[" * NESTED_TOO_DEEP + "]" * NESTED_TOO_DEEP + "\n",
     "ReloadRules.source_toml: arrays and inline tables nested more than 32 deep"),
    ("[program]\nname = 'x'\n" + ".".join(["a"] * DOTTED_KEY_PARTS) + " = 1\n",
     "ReloadRules.source_toml: line 3: more than 32 dotted key parts"),
    (PADDED, f"ReloadRules.source_toml: {len(PADDED)} bytes, more than the limit of 1048576"),
])
def test_a_source_past_the_limits_is_invalid_argument_and_the_old_ruleset_keeps_serving(kassa, source, said):
    before = kassa.admin.GetRules(admin_pb2.GetRulesRequest()).ruleset_version
    started = time.monotonic()

    with pytest.raises(grpc.RpcError) as refused:
        kassa.admin.ReloadRules(admin_pb2.ReloadRulesRequest(source_toml=source), timeout=ANSWER_TIMEOUT_S)

    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()
    assert said in refused.value.details()
    assert time.monotonic() - started < ANSWER_TIMEOUT_S
    assert kassa.admin.GetRules(admin_pb2.GetRulesRequest()).ruleset_version == before
