"""Emulator settings: defaults, validation of PATCHes, TOML loading."""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path
from typing import Any

DEFAULT_REGIONS = [
    "us-east-1", "us-east-2", "us-west-1", "us-west-2",
    "eu-west-1", "eu-central-1", "ap-southeast-2", "ap-northeast-1",
]

DEFAULTS: dict[str, Any] = {
    "block_token_ttl": 7 * 24 * 3600.0,   # seconds
    "page_token_ttl": 3600.0,             # seconds
    "completion_delay": 0.0,              # seconds a completed snapshot stays "pending"
    "not_found_window": 0.0,              # seconds of 404 after start and after completion
    "timeout_unit_seconds": 60.0,         # one StartSnapshot Timeout unit ("minute")
    "page_scan_blocks": 65536,            # block indexes scanned per List page at most
    "throttling": True,
    "get_rate": 1000.0,                   # GetSnapshotBlock / s per snapshot
    "put_rate": 1000.0,                   # PutSnapshotBlock / s per snapshot
    "account_get_rate": 1000.0,           # GetSnapshotBlock / s per account per region
    "account_put_rate": 1000.0,           # PutSnapshotBlock / s per account per region
    "list_rate": 50.0,                    # List* / s per account per region (each op)
    "control_rate": 10.0,                 # Start/Complete / s per account per region (each op)
    "burst_seconds": 0.1,                 # bucket depth in seconds of rate (at least 5 tokens)
    "regions": list(DEFAULT_REGIONS),
    "deny": [],                           # [{"operations": [...], "region": .., "access_key": ..}]
    "access_keys": {},                    # {akid: {"secret": .., "account": ..}}; {} = accept all
    "default_account": "111122223333",
    "pending_limit": 100,                 # pending snapshots per account per region
}

_FLOATS = {"block_token_ttl", "page_token_ttl", "completion_delay", "not_found_window",
           "timeout_unit_seconds", "get_rate", "put_rate", "account_get_rate",
           "account_put_rate", "list_rate", "control_rate", "burst_seconds"}


class ConfigError(ValueError):
    pass


def _check(key: str, value: Any) -> Any:
    if key not in DEFAULTS:
        raise ConfigError(f"unknown config key: {key}")
    if key in _FLOATS:
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ConfigError(f"{key} must be a number >= 0")
        return float(value)
    if key in ("page_scan_blocks", "pending_limit"):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{key} must be an integer >= 1")
        return value
    if key == "throttling":
        if not isinstance(value, bool):
            raise ConfigError("throttling must be true or false")
        return value
    if key == "regions":
        if (not isinstance(value, list) or not value
                or not all(isinstance(r, str) and r for r in value)):
            raise ConfigError("regions must be a non-empty list of region names")
        return list(value)
    if key == "deny":
        return _check_deny(value)
    if key == "access_keys":
        return _check_keys(value)
    if key == "default_account":
        if not (isinstance(value, str) and value.isdigit() and len(value) == 12):
            raise ConfigError("default_account must be 12 digits")
        return value
    raise ConfigError(f"unknown config key: {key}")  # pragma: no cover


def _check_deny(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise ConfigError("deny must be a list of rules")
    rules = []
    for rule in value:
        if not isinstance(rule, dict) or set(rule) - {"operations", "region", "access_key"}:
            raise ConfigError("deny rule keys: operations, region, access_key")
        ops = rule.get("operations")
        if ops is not None and not (isinstance(ops, list)
                                    and all(isinstance(o, str) for o in ops)):
            raise ConfigError("deny.operations must be a list of operation names or null")
        rules.append({"operations": ops, "region": rule.get("region"),
                      "access_key": rule.get("access_key")})
    return rules


def _check_keys(value: Any) -> dict[str, dict[str, str]]:
    if not isinstance(value, dict):
        raise ConfigError("access_keys must map access key id -> {secret, account}")
    out = {}
    for akid, spec in value.items():
        if isinstance(spec, str):
            spec = {"secret": spec}
        if not isinstance(spec, dict) or not isinstance(spec.get("secret"), str):
            raise ConfigError(f"access_keys.{akid} needs a secret")
        account = spec.get("account") or DEFAULTS["default_account"]
        out[akid] = {"secret": spec["secret"], "account": str(account)}
    return out


def parse_access_key(text: str) -> tuple[str, dict[str, str]]:
    """``AKID:SECRET[:ACCOUNT]`` as given to ``--access-key``."""
    parts = text.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
        raise ConfigError("--access-key wants AKID:SECRET[:ACCOUNTID]")
    account = parts[2] if len(parts) == 3 else DEFAULTS["default_account"]
    return parts[0], {"secret": parts[1], "account": account}


def merged(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``base`` with validated ``changes``; ConfigError names the first bad key."""
    out = copy.deepcopy(base)
    for key, value in changes.items():
        out[key] = _check(key, value)
    return out


def load_toml(path: Path) -> dict[str, Any]:
    with path.open("rb") as f:
        data = tomllib.load(f)
    return merged(DEFAULTS, data)


def public(config: dict[str, Any]) -> dict[str, Any]:
    """The config as the control API shows it: secrets blanked."""
    out = copy.deepcopy(config)
    out["access_keys"] = {k: {"secret": "***", "account": v["account"]}
                          for k, v in config["access_keys"].items()}
    return out
