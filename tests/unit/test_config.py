"""The server configuration: what a wrong file or variable is told, the KASSA_* overrides, and that
config/kassa.toml and docs/configuration.md say what the code does."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from kassa.server.config import ConfigError, ServerConfig, load_config

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
        ("[ledger]\nmap_size_bytes = 'big'\n", 'ledger.map_size_bytes: expected an integer, got "big"'),
        ("[ledger]\nsync = 'yes'\n", 'ledger.sync: expected true or false, got "yes"'),
        ("[server]\ngrace_s = 'ten'\n", 'server.grace_s: expected a number, got "ten"'),
        ("[server]\nworkers = 2.5\n", "server.workers: expected an integer, got 2.5"),
        ("[server]\nlisten = 50051\n", "server.listen: expected a string, got 50051"),
        ("[rules]\npaths = 'config/rules'\n", 'rules.paths: expected a list of strings, got "config/rules"'),
        ("server = 5\n", "server: expected a table, got 5"),
        ("[[auth.keys]]\nkey_sha256 = 5\nname = 'pos-1'\n", "auth.keys[0].key_sha256: expected a string, got 5"),
        ("[server]\nlisten = 'localhost'\n", 'server.listen: expected host:port (e.g. 127.0.0.1:50051), got "localhost"'),
        ("[server]\nlisten = '127.0.0.1:65536'\n",
         'server.listen: expected host:port (e.g. 127.0.0.1:50051), got "127.0.0.1:65536"'),
        ("[server]\nlisten = '::1:50051'\n", 'server.listen: expected host:port (e.g. 127.0.0.1:50051), got "::1:50051"'),
        ("[auth]\nenabled = true\n", "auth.enabled is true but auth.keys is empty"),
        ("[[auth.keys]]\nkey_sha256 = 'abc'\nname = 'pos-1'\n",
         "auth.keys[0].key_sha256: not a hex SHA-256 (64 hex digits)"),
        (f"[[auth.keys]]\nkey_sha256 = '{KEY_SHA256}'\n", "Object missing required field `name`"),
        ("[tls]\ncert_file = 'server.pem'\n", "tls.cert_file and tls.key_file go together"),
        ("[ledger]\nmap_size_bytes = 2097152\nmap_size_bytes_max = 1048576\n",
         "ledger.map_size_bytes_max = 1048576 is below ledger.map_size_bytes = 2097152, the size the map starts at"),
        ("[ledger]\ndisk_reserve_bytes = -1\n", "ledger.disk_reserve_bytes = -1 is outside 0..1125899906842624"),
        ("[ledger]\nreplay_window_s = 1.5\n", "ledger.replay_window_s: expected an integer, got 1.5"),
        ("[ledger]\nreplay_window_s = 0\n", "ledger.replay_window_s = 0 is outside 1..316224000"),
        ("[ledger]\nreplay_window_s = 600\nreturn_window_s = 300\n",
         "ledger.return_window_s = 300 is below ledger.replay_window_s = 600: a request is remembered at least as "
         "long as its answer"),
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
        ("KASSA_SERVER_WORKERS", "many", 'server.workers (from KASSA_SERVER_WORKERS): expected an integer, got "many"'),
        ("KASSA_SERVER_GRACE_S", "ten", 'server.grace_s (from KASSA_SERVER_GRACE_S): expected a number, got "ten"'),
        ("KASSA_SERVER_LISTEN", "localhost",
         'server.listen (from KASSA_SERVER_LISTEN): expected host:port (e.g. 127.0.0.1:50051), got "localhost"'),
        ("KASSA_SERVER_WORKERS", "1000", "server.workers = 1000 (from KASSA_SERVER_WORKERS) is outside 0..256"),
        ("KASSA_LEDGER_MAP_SIZE_BYTES", "4G",
         'ledger.map_size_bytes (from KASSA_LEDGER_MAP_SIZE_BYTES): expected an integer, got "4G"'),
    ])
    def test_a_wrong_variable_is_refused_naming_the_variable(self, tmp_path, variable, value, said):
        assert said in refusal(tmp_path, "", {variable: value})

    def test_kassa_serve_with_a_wrong_config_says_why_in_one_line_and_exits_2(self, tmp_path):
        path = tmp_path / "kassa.toml"
        path.write_text("[server]\nwrokers = 2\n")
        done = subprocess.run([sys.executable, "-m", "kassa.server.cli", "serve", "--config", str(path)],
                              cwd=REPO, capture_output=True, text=True, timeout=60)
        assert done.returncode == 2
        assert done.stderr.strip() == f"kassa: {path}: unknown key 'server.wrokers'"


class TestServeRefusesAWrongEnvironment:
    """Through the real `kassa serve`: one line naming the variable, exit 2, nothing served."""

    @pytest.mark.parametrize("variable, value, said", [
        ("KASSA_LEDGER_SYNC", "ture",
         'ledger.sync (from KASSA_LEDGER_SYNC): expected one of 1/0/true/false/yes/no/on/off, got "ture"'),
        ("KASSA_SERVER_WORKRES", "2", "KASSA_SERVER_WORKRES: names no config key; did you mean KASSA_SERVER_WORKERS?"),
        ("KASSA_SERVER_GRACE_S", "ten", 'server.grace_s (from KASSA_SERVER_GRACE_S): expected a number, got "ten"'),
        ("KASSA_SERVER_LISTEN", "localhost",
         'server.listen (from KASSA_SERVER_LISTEN): expected host:port (e.g. 127.0.0.1:50051), got "localhost"'),
    ])
    def test_kassa_serve_says_which_variable_in_one_line_and_exits_2(self, tmp_path, variable, value, said):
        environ = {name: text for name, text in os.environ.items() if not name.startswith("KASSA_")}
        done = subprocess.run(
            [sys.executable, "-m", "kassa.server.cli", "serve", "--config", str(SHIPPED)],
            cwd=tmp_path, env={**environ, "PYTHONPATH": str(REPO), variable: value},
            capture_output=True, text=True, timeout=60,
        )
        assert done.returncode == 2, done.stderr
        assert done.stderr.splitlines() == [f"kassa: {said}" if said.startswith("KASSA_") else f"kassa: {SHIPPED}: {said}"]
        assert not (tmp_path / "data").exists(), "refused before the ledger was opened"


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

    @pytest.mark.parametrize("value, meant", [("1", True), ("true", True), ("YES", True), ("on", True), (" On ", True),
                                               ("0", False), ("false", False), ("No", False), ("OFF", False)])
    def test_booleans(self, value, meant):
        assert load_config(None, {"KASSA_LEDGER_SYNC": value}).ledger.sync is meant

    @pytest.mark.parametrize("value", ["ture", "", "2", "y", "enabled", "nope"])
    def test_a_boolean_that_is_not_one_of_the_words_is_refused_naming_the_variable(self, value):
        with pytest.raises(ConfigError) as refused:
            load_config(None, {"KASSA_LEDGER_SYNC": value})
        assert str(refused.value) == (
            f"config: ledger.sync (from KASSA_LEDGER_SYNC): expected one of 1/0/true/false/yes/no/on/off, got {json.dumps(value)}"
        )

    def test_api_keys_only_from_the_file(self):
        with pytest.raises(ConfigError) as refused:
            load_config(None, {"KASSA_AUTH_KEYS": "anything"})
        assert str(refused.value) == "KASSA_AUTH_KEYS: auth.keys is a list of tables; it can only be set in the config file"

    @pytest.mark.parametrize("variable, said", [
        ("KASSA_SERVER_WORKRES", "KASSA_SERVER_WORKRES: names no config key; did you mean KASSA_SERVER_WORKERS?"),
        ("KASSA_LEGDER_PATH", "KASSA_LEGDER_PATH: names no config key; did you mean KASSA_LEDGER_PATH?"),
        ("KASSA_ZZZ", "KASSA_ZZZ: names no config key (KASSA_<SECTION>_<KEY>, e.g. KASSA_SERVER_LISTEN)"),
    ])
    def test_a_variable_naming_no_key_is_refused_naming_it(self, variable, said):
        with pytest.raises(ConfigError) as refused:
            load_config(None, {variable: "2"})
        assert str(refused.value) == said

    def test_every_key_but_the_api_keys_has_its_variable(self):
        """Each key set from its variable to its default: accepted, and the same config (no variable of
        kassa's own is refused as naming no key)."""
        defaults = keys(load_config(None, {}))
        environ = {f"KASSA_{key.replace('.', '_').upper()}": _as_text(value) for key, value in defaults.items()}
        assert keys(load_config(None, environ)) == defaults

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


def _as_text(value: object) -> str:
    """A default as a KASSA_* variable would hold it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return ",".join(value) if isinstance(value, list) else str(value)
