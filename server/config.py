"""The server configuration: one TOML file, typed once, overridable by KASSA_* variables."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

import msgspec


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
    map_size_bytes: int = 4 * 1024**3
    sync: bool = True
    readers_max: int = 512
    reader_check_interval_s: float = 10  # reclaim reader slots of dead processes this often


class RulesSection(_Section):
    paths: list[str] = msgspec.field(default_factory=lambda: ["config/rules"])


class ProcessingSection(_Section):
    hold_ttl_s: int = 900
    batch_operations_max: int = 10_000
    stream_events_in_flight_max: int = 20_000
    stream_bytes_in_flight_max: int = 2 * 1024 * 1024  # request bytes read from one stream and not yet acked
    streams_bytes_in_flight_max: int = 16 * 1024 * 1024  # the same over all of a worker's streams together
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


class ConfigError(Exception):
    pass


ENV_PREFIX = "KASSA_"
LIMITS = {  # (section, key): (least, most), checked after decoding
    ("server", "workers"): (0, 256),
    ("server", "grace_s"): (0, 3600),
    ("server", "message_bytes_max"): (1024, 1024**3),
    ("ledger", "map_size_bytes"): (1024**2, 1024**5),
    ("ledger", "readers_max"): (8, 100_000),
    ("ledger", "reader_check_interval_s"): (0.1, 3600),
    ("processing", "hold_ttl_s"): (1, 30 * 86_400),
    ("processing", "batch_operations_max"): (1, 1_000_000),
    ("processing", "stream_events_in_flight_max"): (1, 10_000_000),
    ("processing", "streams_max"): (1, 100_000),
    ("processing", "stream_bytes_in_flight_max"): (1024, 1024**3),
    ("processing", "streams_bytes_in_flight_max"): (1024, 64 * 1024**3),
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
    from_environment = _apply_environment(raw, os.environ if environ is None else environ)

    def source(key: str) -> str:
        """Where a wrong value of `key` came from, when a variable set it."""
        return f" (from {from_environment[key]})" if key in from_environment else ""

    try:
        config = msgspec.convert(raw, type=ServerConfig, strict=False)
    except msgspec.ValidationError as error:
        where, colon, detail = _name_key(str(error)).partition(":")
        raise ConfigError(f"{path or 'config'}: {where}{source(where) if colon else ''}{colon}{detail}") from None
    for index, key in enumerate(config.auth.keys):
        if len(key.key_sha256) != 64 or any(c not in "0123456789abcdefABCDEF" for c in key.key_sha256):
            raise ConfigError(f"{path or 'config'}: auth.keys[{index}].key_sha256: not a hex SHA-256 (64 hex digits)")
    if config.auth.enabled and not config.auth.keys:
        raise ConfigError(f"{path or 'config'}: auth.enabled is true but auth.keys is empty")
    if bool(config.tls.cert_file) != bool(config.tls.key_file):
        raise ConfigError(f"{path or 'config'}: tls.cert_file and tls.key_file go together")
    for (section, key), (least, most) in LIMITS.items():
        value = getattr(getattr(config, section), key)
        if not least <= value <= most:
            raise ConfigError(
                f"{path or 'config'}: {section}.{key} = {value}{source(f'{section}.{key}')} is outside {least}..{most}"
            )
    return config


def _apply_environment(raw: dict[str, Any], environ) -> dict[str, str]:
    """Put the KASSA_* overrides into `raw`; returns which keys they set ("ledger.path": its variable)."""
    found = {}
    for section_name, section_type in ServerConfig.__annotations__.items():
        section_struct = getattr(ServerConfig(), section_name)
        for key in type(section_struct).__struct_fields__:
            if (section_name, key) == ("auth", "keys"):
                continue  # a list of tables: only the config file can hold it
            variable = f"{ENV_PREFIX}{section_name}_{key}".upper()
            value = environ.get(variable)
            if value is None:
                continue
            found[f"{section_name}.{key}"] = variable
            default = getattr(section_struct, key)
            section = raw.setdefault(section_name, {})
            if isinstance(default, list):
                section[key] = [item.strip() for item in value.split(",") if item.strip()]
            elif isinstance(default, bool):
                section[key] = value.strip().lower() in ("1", "true", "yes", "on")
            else:
                section[key] = value
    return found


def _name_key(message: str) -> str:
    """msgspec says `... - at `$.ledger.map_size``; say `ledger.map_size: ...` instead."""
    detail, _, where = message.partition(" - at `$")
    where = where.rstrip("`").lstrip(".")
    unknown = detail.startswith("Object contains unknown field `")
    if unknown:
        key = detail.split("`")[1]
        return f"unknown key '{where + '.' if where else ''}{key}'"
    return f"{where}: {detail}" if where else detail
