"""The server configuration: one TOML file, typed once, overridable by KASSA_* variables."""

from __future__ import annotations

import difflib
import json
import os
import tomllib
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import msgspec

from kassa.core_ext.limits import PARTITIONS_MAX
from kassa.server.cluster.settings import ClusterSection


class _Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class ServerSection(_Section):
    listen: str = "127.0.0.1:50051"
    workers: int = 0  # 0: one per core
    pin_workers: bool = True  # with several workers, keep each one's threads on its own share of the cores
    grace_s: float = 10
    message_bytes_max: int = 4 * 1024 * 1024
    keepalive_s: float = 30  # ping an idle connection this often
    keepalive_timeout_s: float = 10  # close it when a ping is not answered in this time
    stream_window_bytes: int = 1024 * 1024  # per call: request bytes a client may send ahead of what the server read
    bench_noop: bool = False  # serve kassa.v1.Bench, the no-op baseline of bench/throughput.py


class LedgerSection(_Section):
    path: str = "data/ledger"
    map_size_bytes: int = 4 * 1024**3  # the map's starting size; it grows by itself (core_ext/map_size.py)
    map_size_bytes_max: int = 1024**4  # the map grows up to this, and to what the disk holds
    disk_reserve_bytes: int = 1024**3  # the map never grows into the last this many free bytes of the disk
    sync: bool = True
    readers_max: int = 512
    reader_check_interval_s: float = 10  # reclaim reader slots of dead processes this often
    archive_interval_s: float = 0  # archive the journal's closed period this often in the server; 0: off
    archive_after_s: int = 7 * 86_400  # the closed period: journal entries older than this (never inside replay_window_s)
    # Seconds, not days: a test or a soak shortens them to minutes without fractions (core_ext/retention.py).
    replay_window_s: int = 7 * 86_400  # a retry is answered byte for byte this long; then refused, never reapplied
    return_window_s: int = 90 * 86_400  # a return by original_request_id works this long; then the request is forgotten
    compaction_interval_s: float = 600  # drop answers, forget requests, remove ended lots and holds this often; 0: never
    partitions: int = 1  # LMDB environments (one writer each) under path; 1: the one environment at path


class RulesSection(_Section):
    paths: list[str] = msgspec.field(default_factory=lambda: ["config/rules"])


class ProcessingSection(_Section):
    hold_ttl_s: int = 900
    batch_operations_max: int = 10_000
    stream_events_in_flight_max: int = 20_000
    stream_bytes_in_flight_max: int = 2 * 1024 * 1024  # request bytes read from one stream and not yet acked
    streams_bytes_in_flight_max: int = 16 * 1024 * 1024  # the same over all of a worker's streams together
    stream_ack_write_timeout_s: float = 30  # a stream whose client takes no ack for this long is ended
    streams_max: int = 256  # concurrent StreamEvents calls per worker process
    expiry_sweep_interval_s: float = 3600  # 0: only Admin.ExpirePoints sweeps


class CommitSection(_Section):
    batch_max: int = 10_000
    wait_us_max: int = 5_000


class ClockSection(_Section):
    file: str = ""


class ApiKey(_Section):
    key_sha256: str  # hex SHA-256 of the key sent in the x-api-key metadata
    name: str  # the terminal or operator, recorded in the journal
    stores: list[str] = []  # the stores it may act for; empty: every store
    admin: bool = False  # may call Admin and Accounts.Adjust
    rate_per_s: float = 0  # 0: auth.rate_per_s
    burst: int = 0  # 0: auth.burst


class AuthSection(_Section):
    enabled: bool = False  # off: every caller is "anonymous" with every right
    rate_per_s: float = 1000  # calls a second per key, on average
    burst: int = 2000  # calls per key at once
    keys: list[ApiKey] = []


class TlsSection(_Section):
    cert_file: str = ""  # PEM; empty: plaintext
    key_file: str = ""
    client_ca_file: str = ""  # PEM; set: clients must present a certificate it signed (mTLS)


class MetricsSection(_Section):
    listen: str = ""  # host:port of the Prometheus /metrics endpoint; empty: off


class LogSection(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"  # debug: also a line per answered call


class ServerConfig(_Section):
    server: ServerSection = ServerSection()
    ledger: LedgerSection = LedgerSection()
    rules: RulesSection = RulesSection()
    processing: ProcessingSection = ProcessingSection()
    commit: CommitSection = CommitSection()
    clock: ClockSection = ClockSection()
    auth: AuthSection = AuthSection()
    tls: TlsSection = TlsSection()
    metrics: MetricsSection = MetricsSection()
    log: LogSection = LogSection()
    cluster: ClusterSection = ClusterSection()  # no nats_urls: the single node of today


class ConfigError(Exception):
    pass


ENV_PREFIX = "KASSA_"
LIMITS = {  # (section, key): (least, most), checked after decoding
    ("server", "workers"): (0, 256),
    ("server", "grace_s"): (0, 3600),
    ("server", "message_bytes_max"): (1024, 1024**3),
    ("ledger", "map_size_bytes"): (1024**2, 1024**5),
    ("ledger", "map_size_bytes_max"): (1024**2, 1024**5),
    ("ledger", "disk_reserve_bytes"): (0, 1024**5),
    ("ledger", "readers_max"): (8, 100_000),
    ("ledger", "partitions"): (1, PARTITIONS_MAX),
    ("ledger", "reader_check_interval_s"): (0.1, 3600),
    ("ledger", "archive_interval_s"): (0, 86_400),
    ("ledger", "archive_after_s"): (1, 100 * 366 * 86_400),
    ("ledger", "replay_window_s"): (1, 10 * 366 * 86_400),
    ("ledger", "return_window_s"): (1, 10 * 366 * 86_400),
    ("ledger", "compaction_interval_s"): (0, 86_400),
    ("processing", "hold_ttl_s"): (1, 30 * 86_400),
    ("processing", "batch_operations_max"): (1, 1_000_000),
    ("processing", "stream_events_in_flight_max"): (1, 10_000_000),
    ("processing", "streams_max"): (1, 100_000),
    ("processing", "stream_bytes_in_flight_max"): (1024, 1024**3),
    ("processing", "streams_bytes_in_flight_max"): (1024, 64 * 1024**3),
    ("processing", "stream_ack_write_timeout_s"): (0.1, 3600),
    ("processing", "expiry_sweep_interval_s"): (0, 86_400),
    ("server", "keepalive_s"): (1, 86_400),
    ("server", "keepalive_timeout_s"): (1, 3600),
    ("server", "stream_window_bytes"): (64 * 1024, 1024**3),  # HTTP/2 allows up to 2**31 - 1
    ("commit", "batch_max"): (1, 100_000),
    ("auth", "rate_per_s"): (0.001, 1_000_000),
    ("auth", "burst"): (1, 10_000_000),
    ("commit", "wait_us_max"): (0, 1_000_000),
}


def load_config(path: str | Path | None, environ: dict[str, str] | None = None) -> ServerConfig:
    """Decode `path` (None: defaults only), apply KASSA_<SECTION>_<KEY> overrides, check limits."""
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as error:
            raise ConfigError(f"{path}: cannot read: {error.strerror}") from None
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"{path}: not valid TOML: {error}") from None
    from_environment = _apply_environment(raw, os.environ if environ is None else environ, path or "config")

    def source(key: str) -> str:
        """Where a wrong value of `key` came from, when a variable set it."""
        return f" (from {from_environment[key]})" if key in from_environment else ""

    def refuse(key: str, detail: str) -> ConfigError:
        return ConfigError(f"{path or 'config'}: {key}{source(key)}{detail}")

    _check_types(raw, ServerConfig, "", refuse)
    try:
        config = msgspec.convert(raw, type=ServerConfig)
    except msgspec.ValidationError as error:  # an unknown key or a missing one: the types were checked above
        where, colon, detail = _name_key(str(error)).partition(":")
        raise (refuse(where, colon + detail) if colon else ConfigError(f"{path or 'config'}: {where}")) from None
    for index, key in enumerate(config.auth.keys):
        if len(key.key_sha256) != 64 or any(c not in "0123456789abcdefABCDEF" for c in key.key_sha256):
            raise ConfigError(f"{path or 'config'}: auth.keys[{index}].key_sha256: not a hex SHA-256 (64 hex digits)")
    if config.auth.enabled and not config.auth.keys:
        raise ConfigError(f"{path or 'config'}: auth.enabled is true but auth.keys is empty")
    if bool(config.tls.cert_file) != bool(config.tls.key_file):
        raise ConfigError(f"{path or 'config'}: tls.cert_file and tls.key_file go together")
    if split_listen(config.server.listen) is None:
        raise refuse("server.listen", f": expected host:port (e.g. 127.0.0.1:50051), got {_shown(config.server.listen)}")
    for (section, key), (least, most) in LIMITS.items():
        value = getattr(getattr(config, section), key)
        if not least <= value <= most:
            raise ConfigError(
                f"{path or 'config'}: {section}.{key} = {value}{source(f'{section}.{key}')} is outside {least}..{most}"
            )
    if config.ledger.return_window_s < config.ledger.replay_window_s:
        raise ConfigError(
            f"{path or 'config'}: ledger.return_window_s = {config.ledger.return_window_s}"
            f"{source('ledger.return_window_s')} is below ledger.replay_window_s = {config.ledger.replay_window_s}"
            f"{source('ledger.replay_window_s')}: a request is remembered at least as long as its answer"
        )
    if config.ledger.map_size_bytes_max < config.ledger.map_size_bytes:
        raise ConfigError(
            f"{path or 'config'}: ledger.map_size_bytes_max = {config.ledger.map_size_bytes_max}"
            f"{source('ledger.map_size_bytes_max')} is below ledger.map_size_bytes = {config.ledger.map_size_bytes}"
            f"{source('ledger.map_size_bytes')}, the size the map starts at"
        )
    return config


def split_listen(listen: str) -> tuple[str, int] | None:
    """`host:port` (an IPv6 host in brackets: `[::1]:50051`) as (host without brackets, port); None when
    `listen` is not of that form."""
    host, colon, port = listen.rpartition(":")
    if not colon or not host or not port.isascii() or not port.isdigit() or int(port) > PORT_MAX:
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        return None  # an IPv6 address without brackets: where its port begins is a guess
    if not host or any(character.isspace() for character in host):
        return None
    return host, int(port)


def _apply_environment(raw: dict[str, Any], environ, source: str | Path) -> dict[str, str]:
    """Put the KASSA_* overrides into `raw`, typed; returns which keys they set ("ledger.path": its
    variable). A KASSA_* variable that names no key is refused: a misspelt one would be ignored."""
    fields = _environment_fields()
    found = {}
    for variable in sorted(name for name in environ if name.startswith(ENV_PREFIX)):
        if variable not in fields:
            raise ConfigError(_unknown_variable(variable, fields))
        section_name, field = fields[variable]
        key = f"{section_name}.{field.name}"
        if field.type == list[ApiKey]:
            raise ConfigError(f"{variable}: {key} is a list of tables; it can only be set in the config file")
        found[key] = variable
        raw_section = raw.setdefault(section_name, {})
        if not isinstance(raw_section, dict):
            raise ConfigError(f"{source}: {section_name}: expected a table, got {_shown(raw_section)}")
        raw_section[field.name] = _from_text(environ[variable], field.type, f"{source}: {key} (from {variable})")
    return found


def _environment_fields() -> dict[str, tuple[str, msgspec.structs.FieldInfo]]:
    """KASSA_<SECTION>_<KEY> -> (section, field), for every key."""
    fields = {}
    for section in msgspec.structs.fields(ServerConfig):
        for field in msgspec.structs.fields(section.type):
            fields[f"{ENV_PREFIX}{section.name}_{field.name}".upper()] = (section.name, field)
    return fields


def _unknown_variable(variable: str, fields) -> str:
    close = difflib.get_close_matches(variable, fields, n=1)
    hint = f"; did you mean {close[0]}?" if close else " (KASSA_<SECTION>_<KEY>, e.g. KASSA_SERVER_LISTEN)"
    return f"{variable}: names no config key{hint}"


BOOLEAN_WORDS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}
PORT_MAX = 65_535
TYPE_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string",
              list[str]: "a list of strings"}


def _from_text(text: str, wanted: Any, where: str) -> Any:
    """A variable's text as a value of the key's type; anything else is refused, naming `where`."""
    if wanted is bool:
        if text.strip().lower() not in BOOLEAN_WORDS:
            raise ConfigError(f"{where}: expected one of 1/0/true/false/yes/no/on/off, got {_shown(text)}")
        return BOOLEAN_WORDS[text.strip().lower()]
    if wanted == list[str]:
        return [item.strip() for item in text.split(",") if item.strip()]
    if wanted in (int, float):
        try:
            return wanted(text.strip())
        except ValueError:
            raise ConfigError(f"{where}: expected {TYPE_WORDS[wanted]}, got {_shown(text)}") from None
    return text


def _check_types(raw: Any, struct_type: type, where: str, refuse) -> None:
    """Check each known key's value against its type, saying what was expected and what came in
    kassa's words (`server.grace_s: expected a number, got "ten"`). Unknown and missing keys are left
    to msgspec, which names them."""
    if not isinstance(raw, dict):
        raise refuse(where, f": expected a table, got {_shown(raw)}")
    for field in msgspec.structs.fields(struct_type):
        if field.encode_name not in raw:
            continue
        value, key = raw[field.encode_name], f"{where}.{field.name}" if where else field.name
        if isinstance(field.type, type) and issubclass(field.type, msgspec.Struct):
            _check_types(value, field.type, key, refuse)
        elif field.type == list[ApiKey]:
            if not isinstance(value, list):
                raise refuse(key, f": expected a list of tables ([[{key}]]), got {_shown(value)}")
            for index, item in enumerate(value):
                _check_types(item, ApiKey, f"{key}[{index}]", refuse)
        elif get_origin(field.type) is Literal:  # a choice of names, in any case (`INFO` is `info`)
            if not isinstance(value, str) or value.lower() not in get_args(field.type):
                raise refuse(key, f": expected one of {', '.join(get_args(field.type))}, got {_shown(value)}")
            raw[field.encode_name] = value.lower()
        elif not _fits(value, field.type):
            raise refuse(key, f": expected {TYPE_WORDS[field.type]}, got {_shown(value)}")


def _fits(value: Any, wanted: Any) -> bool:
    if wanted is bool or wanted is str:
        return isinstance(value, wanted)
    if wanted is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if wanted is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if wanted == list[str]:
        return isinstance(value, list) and all(isinstance(item, str) for item in value)
    raise AssertionError(f"a config key of type {wanted} has no check")


def _shown(value: Any) -> str:
    """A value as the message shows it: strings quoted, the rest as TOML writes them."""
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return "a table" if isinstance(value, dict) else "a list" if isinstance(value, list) else type(value).__name__


def _name_key(message: str) -> str:
    """msgspec says `... - at `$.ledger.map_size``; say `ledger.map_size: ...` instead."""
    detail, _, where = message.partition(" - at `$")
    where = where.rstrip("`").lstrip(".")
    unknown = detail.startswith("Object contains unknown field `")
    if unknown:
        key = detail.split("`")[1]
        return f"unknown key '{where + '.' if where else ''}{key}'"
    return f"{where}: {detail}" if where else detail
