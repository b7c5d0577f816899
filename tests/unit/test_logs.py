"""server/logs.py: each JSON line names its worker and pid and, inside a call, its request id;
the config key log.level chooses the level and is refused naming the key."""

from __future__ import annotations

import contextvars
import json
import logging
import os
from pathlib import Path

import pytest

from kassa.server.config import ConfigError, load_config
from kassa.server.logs import REQUEST_ID, JsonFormatter


def formatted(formatter: JsonFormatter, **fields) -> dict:
    record = logging.LogRecord("kassa.test", logging.INFO, __file__, 1, "hello", None, None)
    record.fields = fields
    return json.loads(formatter.format(record))


class TestJsonFormatter:
    def test_a_line_names_its_worker_and_pid(self):
        entry = formatted(JsonFormatter(3))
        assert (entry["worker"], entry["pid"]) == (3, os.getpid())
        assert "request_id" not in entry  # outside a call

    def test_the_supervisor_says_so_instead_of_a_worker(self):
        entry = formatted(JsonFormatter(None))
        assert entry["supervisor"] is True
        assert "worker" not in entry

    def test_a_line_written_inside_a_call_carries_its_request_id(self):
        def inside_a_call():
            REQUEST_ID.set("store-1/pos-2/R-17")
            return formatted(JsonFormatter(0), code="OK")

        entry = contextvars.copy_context().run(inside_a_call)
        assert entry["request_id"] == "store-1/pos-2/R-17"
        assert entry["code"] == "OK"
        assert REQUEST_ID.get() == ""  # the call's id stays with the call


class TestLogLevelConfig:
    def test_defaults_to_info_and_takes_a_variable(self):
        assert load_config(None, {}).log.level == "info"
        assert load_config(None, {"KASSA_LOG_LEVEL": "debug"}).log.level == "debug"

    def test_a_level_is_taken_in_any_case(self, tmp_path: Path):
        path = tmp_path / "kassa.toml"
        path.write_text('[log]\nlevel = "WARNING"\n')

        assert load_config(str(path), {}).log.level == "warning"
        assert load_config(None, {"KASSA_LOG_LEVEL": "Debug"}).log.level == "debug"

    def test_an_unknown_level_is_refused_naming_the_key(self, tmp_path: Path):
        path = tmp_path / "kassa.toml"
        path.write_text('[log]\nlevel = "verbose"\n')
        with pytest.raises(ConfigError) as caught:
            load_config(path, {})
        assert str(caught.value) == f'{path}: log.level: expected one of debug, info, warning, error, got "verbose"'

    def test_a_wrong_variable_is_refused_naming_the_variable(self):
        with pytest.raises(ConfigError) as caught:
            load_config(None, {"KASSA_LOG_LEVEL": "loud"})
        assert "log.level (from KASSA_LOG_LEVEL)" in str(caught.value)
