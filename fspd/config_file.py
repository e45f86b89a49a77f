"""Finding and reading the settings file, without validating it (no pydantic here).

fspd/config.py validates the whole file into :class:`~fspd.config.Settings`. The daemon's
clients (``fspd status``, ``watch``, ``cancel``, ...) need only where the socket is, so they
read that one key here: validating every key would cost more CPU than the whole command.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from fspd.errors import BadInput

DEFAULT_CONFIG_PATHS = (Path("/etc/fspd/fspd.toml"),)
DEFAULT_SOCKET_PATH = Path("/run/fspd/fspd.sock")


def read(path: Path | str | None = None) -> tuple[Path, dict[str, Any]] | None:
    """The settings file (``path``, $FSPD_CONFIG, or /etc/fspd/fspd.toml) and its TOML;
    None when there is none (defaults apply). A file named explicitly must exist."""
    candidates = [Path(path)] if path else []
    if not candidates and os.environ.get("FSPD_CONFIG"):
        candidates = [Path(os.environ["FSPD_CONFIG"])]
    explicit = bool(candidates)
    if not candidates:
        candidates = [p for p in DEFAULT_CONFIG_PATHS if p.exists()]
    if not candidates:
        return None
    cfg = candidates[0]
    try:
        return cfg, tomllib.loads(cfg.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if explicit:
            raise BadInput(f"config file {cfg} does not exist", field="config") from None
        return None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise BadInput(f"{cfg} is not valid TOML: {exc}", field="config") from None


def socket_path(path: Path | str | None = None) -> Path:
    """``daemon.socket_path`` from the settings file, or its default."""
    found = read(path)
    if found is None:
        return DEFAULT_SOCKET_PATH
    cfg, data = found
    daemon = data.get("daemon", {})
    value = daemon.get("socket_path", str(DEFAULT_SOCKET_PATH)) if isinstance(daemon, dict) \
        else None
    if not isinstance(value, str) or not value:
        raise BadInput(f"{cfg}: daemon.socket_path: must be a path", field="config")
    return Path(value)
