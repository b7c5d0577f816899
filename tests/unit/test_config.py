"""The server configuration: what a wrong file or variable is told, the KASSA_* overrides, and that
config/kassa.toml and docs/configuration.md say what the code does."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from server.config import ConfigError, ServerConfig, load_config

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "config" / "kassa.toml"
KEY_SHA256 = "a" * 64


def refusal(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> str:
    path = tmp_path / "kassa.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ or {})
    message = str(caught.value)
    assert message.startswith(f"{path}: "), message  # which file
    return message[len(f"{path}: "):]


def keys(config: msgspec.Struct) -> dict[str, object]:
    """"section.key" -> value, for every key of every section (auth.keys left out: a list of tables)."""
    return {
        f"{section}.{key}": getattr(getattr(config, section), key)
        for section in ServerConfig.__struct_fields__
        for key in type(getattr(config, section)).__struct_fields__
        if (section, key) != ("auth", "keys")
    }


class TestRefused:
    @pytest.mark.parametrize("text, said", [
        ("[server]\nwrokers = 2\n", "unknown key 'server.wrokers'"),
        ("[srv]\nworkers = 2\n", "unknown key 'srv'"),
        ("[server]\nworkers = 1000\n", "server.workers = 1000 is outside 0..256"),
        ("[commit]\nwait_us_max = -1\n", "commit.wait_us_max = -1 is outside 0..1000000"),
        ("[ledger]\nmap_size_bytes = 'big'\n", "ledger.map_size_bytes: Expected `int`, got `str`"),
        ("[ledger]\nsync = 'yes'\n", "ledger.sync: Expected `bool`, got `str`"),
        ("[auth]\nenabled = true\n", "auth.enabled is true but auth.keys is empty"),
        ("[[auth.keys]]\nkey_sha256 = 'abc'\nname = 'pos-1'\n",
         "auth.keys[0].key_sha256: not a hex SHA-256 (64 hex digits)"),
        (f"[[auth.keys]]\nkey_sha256 = '{KEY_SHA256}'\n", "Object missing required field `name`"),
        ("[tls]\ncert_file = 'server.pem'\n", "tls.cert_file and tls.key_file go together"),
    ])
    def test_a_wrong_file_is_refused_naming_the_key(self, tmp_path, text, said):
        assert said in refusal(tmp_path, text)

    def test_not_toml_says_where(self, tmp_path):
        said = refusal(tmp_path, "[server\n")
        assert said.startswith("not valid TOML: ") and "line 1" in said, said

    def test_a_missing_file_says_so(self, tmp_path):
        with pytest.raises(ConfigError, match=r"nothing\.toml: cannot read: No such file or directory"):
            load_config(tmp_path / "nothing.toml", {})

    @pytest.mark.parametrize("variable, value, said", [
        ("KASSA_SERVER_WORKERS", "many", "server.workers (from KASSA_SERVER_WORKERS): Expected `int`, got `str`"),
        ("KASSA_SERVER_WORKERS", "1000", "server.workers = 1000 (from KASSA_SERVER_WORKERS) is outside 0..256"),
        ("KASSA_LEDGER_MAP_SIZE_BYTES", "4G",
         "ledger.map_size_bytes (from KASSA_LEDGER_MAP_SIZE_BYTES): Expected `int`, got `str`"),
    ])
    def test_a_wrong_variable_is_refused_naming_the_variable(self, tmp_path, variable, value, said):
        assert said in refusal(tmp_path, "", {variable: value})

    def test_kassa_serve_with_a_wrong_config_says_why_in_one_line_and_exits_2(self, tmp_path):
        path = tmp_path / "kassa.toml"
        path.write_text("[server]\nwrokers = 2\n")
        done = subprocess.run([sys.executable, "-m", "server.cli", "serve", "--config", str(path)],
                              cwd=REPO, capture_output=True, text=True, timeout=60)
        assert done.returncode == 2
        assert done.stderr.strip() == f"kassa: {path}: unknown key 'server.wrokers'"


class TestOverrides:
    def test_variables_override_the_file_with_their_types(self, tmp_path):
        path = tmp_path / "kassa.toml"
        path.write_text("[server]\nworkers = 4\n[ledger]\nsync = true\n")
        config = load_config(path, {
            "KASSA_SERVER_WORKERS": "3", "KASSA_LEDGER_SYNC": "off", "KASSA_RULES_PATHS": "a, b,",
            "KASSA_SERVER_GRACE_S": "2.5", "KASSA_SERVER_PIN_WORKERS": "no",
        })
        assert config.server.workers == 3
        assert config.ledger.sync is False
        assert config.rules.paths == ["a", "b"]
        assert config.server.grace_s == 2.5
        assert config.server.pin_workers is False

    @pytest.mark.parametrize("value, meant", [("1", True), ("true", True), ("YES", True), ("on", True),
                                               ("0", False), ("false", False), ("", False)])
    def test_booleans(self, value, meant):
        assert load_config(None, {"KASSA_LEDGER_SYNC": value}).ledger.sync is meant

    def test_api_keys_only_from_the_file(self):
        assert load_config(None, {"KASSA_AUTH_KEYS": "anything"}).auth.keys == []


class TestDocumented:
    def test_the_shipped_file_sets_the_codes_defaults(self):
        assert keys(load_config(SHIPPED, {})) == keys(load_config(None, {}))

    def test_the_docs_list_every_key_with_its_default(self):
        reference = (REPO / "docs" / "configuration.md").read_text()
        documented = dict(re.findall(r"^\| `([a-z_]+\.[a-z_]+)` \|.*\| `([^`]*)` \|$", reference, re.MULTILINE))
        defaults = {key: _as_toml(value) for key, value in keys(load_config(None, {})).items()}
        assert documented == defaults


def _as_toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (str, list)):
        return json.dumps(value)
    return str(value)
