"""fspd's settings: one TOML file (``config/fspd.toml`` documents every key and its default).

Every queue, pool, retry and timeout in fspd takes its bound from here.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fspd.errors import BadInput

DEFAULT_CONFIG_PATHS = (Path("/etc/fspd/fspd.toml"),)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TransferSettings(_Section):
    # Requests in flight per snapshot stream. AWS's worked example: 100 ms x 100 = 1,000/s.
    fetch_concurrency: int = Field(128, ge=1, le=1024)
    put_concurrency: int = Field(128, ge=1, le=1024)
    # Blocks buffered between stages (per queue). Memory ~ queue_blocks x 512 KiB per queue.
    queue_blocks: int = Field(64, ge=1, le=8192)
    # Client-side pacing per snapshot stream, under AWS's 1,000 requests/s per snapshot quota.
    per_snapshot_rps: float = Field(970.0, gt=0, le=100_000)
    # Pacing of all Get (or all Put) streams of one account and region together: AWS's default
    # quota is 1,000/s; raise it here when AWS has raised yours (5,000 is common).
    per_account_rps: float = Field(1000.0, gt=0, le=1_000_000)
    # Blocks (512 KiB) buffered in memory by all jobs of one process together.
    max_buffered_blocks: int = Field(512, ge=16, le=65_536)
    # Threads for hashing, compression and file I/O (they release the GIL).
    worker_threads: int = Field(4, ge=1, le=64)
    hash_in_threads: bool = False
    # Sign with botocore, send Get/PutSnapshotBlock with aiohttp (see docs/performance).
    fast_path: bool = True
    list_page_size: int = Field(10_000, ge=100, le=10_000)
    # How often a job journals its progress (a crash loses at most this much work).
    checkpoint_interval_s: float = Field(5.0, gt=0, le=3600)


class RetrySettings(_Section):
    max_attempts: int = Field(8, ge=1, le=100)  # per block / request, for 5xx and network errors
    max_throttle_attempts: int = Field(30, ge=1, le=1000)  # throttling only slows a job down
    backoff_base_s: float = Field(0.1, gt=0, le=60)
    backoff_cap_s: float = Field(20.0, gt=0, le=600)
    # AWS's eventual-consistency window after StartSnapshot / completion.
    not_found_window_s: float = Field(120.0, ge=0, le=3600)
    connect_timeout_s: float = Field(10.0, gt=0, le=600)
    read_timeout_s: float = Field(60.0, gt=0, le=3600)
    job_deadline_s: float = Field(0.0, ge=0)  # 0 = no whole-job deadline
    completion_wait_s: float = Field(3600.0, gt=0)  # wait for "completed" after CompleteSnapshot


class SnapshotSettings(_Section):
    timeout_minutes: int = Field(4320, ge=10, le=4320)  # StartSnapshot Timeout for new snapshots


class S3Settings(_Section):
    # Archive objects above this size go up as multipart uploads, in parts of part_size
    # (S3 allows 5 MiB to 5 GiB per part, at most 10,000 parts).
    multipart_threshold: int = Field(64 << 20, ge=5 << 20, le=5 << 30)
    part_size: int = Field(16 << 20, ge=5 << 20, le=5 << 30)
    # Windows (segment_blocks each) one archive destination holds in memory at a time, each
    # reserved whole from transfer.max_buffered_blocks (see fspd/endpoints/s3.py).
    windows_in_flight: int = Field(2, ge=1, le=64)


class PathSettings(_Section):
    # Prefixes jobs may write to / read from. By default nothing under /dev.
    allow_write: tuple[str, ...] = ("/",)
    allow_read: tuple[str, ...] = ("/",)
    allow_devices: tuple[str, ...] = ()


class AwsSettings(_Section):
    # Endpoints a job file may name in endpoint_url, besides AWS's own for the job's partition
    # (https://*.amazonaws.com, or https://*.amazonaws.com.cn for cn-* regions). Each entry is
    # scheme://host[:port]; a host may start with "*." and a port may be "*". The command
    # line's --endpoint-url and AWS_ENDPOINT_URL* in the environment are always allowed.
    allow_endpoints: tuple[str, ...] = ()

    @field_validator("allow_endpoints")
    @classmethod
    def _patterns(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        from fspd.endpoint_policy import parse_pattern

        for entry in value:
            parse_pattern(entry)
        return value


class DaemonSettings(_Section):
    """``fspd serve``. Keys marked (reload) change on SIGHUP; the others need a restart."""

    spool_dir: Path = Path("/var/spool/fspd")  # tmp/ new/ active/ done/ failed/ live here
    state_dir: Path = Path("/var/lib/fspd")  # per-job state (checkpoints)
    socket_path: Path = Path("/run/fspd/fspd.sock")  # control socket (HTTP + JSON)
    socket_group: str | None = None  # group owning the socket (mode 0660); None = daemon's
    control_group: str | None = None  # (reload) members may cancel/pause/submit/set bandwidth
    max_jobs: int = Field(4, ge=1, le=256)  # (reload) jobs running at once
    bandwidth_bytes_per_s: int = Field(0, ge=0)  # (reload) shared by all jobs; 0 = unlimited
    rescan_interval_s: float = Field(30.0, gt=0, le=3600)  # (reload) full rescan of new/
    poll_interval_s: float = Field(0.5, gt=0, le=5)  # (reload) new/ poll without inotify
    stale_tmp_after_s: float = Field(86400.0, ge=60)  # (reload) tmp/ files older are removed
    stop_timeout_s: float = Field(20.0, gt=0, le=3600)  # (reload) bound for a clean SIGTERM
    max_job_file_bytes: int = Field(1 << 20, ge=1024, le=1 << 20)  # (reload) bigger: failed/
    event_interval_s: float = Field(0.5, ge=0.05, le=60)  # (reload) progress event period
    history: int = Field(1000, ge=0, le=100_000)  # (reload) finished jobs kept in memory
    watchdog: bool = True  # send WATCHDOG=1 when systemd sets WATCHDOG_USEC
    # Worker processes that run the jobs; 0 = one per CPU the service may use
    # (os.sched_getaffinity). Restart to change.
    workers: int = Field(0, ge=0, le=256)


class Settings(_Section):
    transfer: TransferSettings = TransferSettings()
    retry: RetrySettings = RetrySettings()
    snapshot: SnapshotSettings = SnapshotSettings()
    paths: PathSettings = PathSettings()
    aws: AwsSettings = AwsSettings()
    s3: S3Settings = S3Settings()
    daemon: DaemonSettings = DaemonSettings()
    log_level: Literal["debug", "info", "warning", "error"] = "info"


def _describe(err: ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "(top level)"
    return f"{where}: {first['msg']}"


def load(path: Path | str | None = None) -> Settings:
    """Load settings from ``path``, $FSPD_CONFIG, or /etc/fspd/fspd.toml; defaults otherwise."""
    candidates = [Path(path)] if path else []
    if not candidates and os.environ.get("FSPD_CONFIG"):
        candidates = [Path(os.environ["FSPD_CONFIG"])]
    explicit = bool(candidates)
    if not candidates:
        candidates = [p for p in DEFAULT_CONFIG_PATHS if p.exists()]
    if not candidates:
        return Settings()
    cfg = candidates[0]
    try:
        data = tomllib.loads(cfg.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if explicit:
            raise BadInput(f"config file {cfg} does not exist", field="config") from None
        return Settings()
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise BadInput(f"{cfg} is not valid TOML: {exc}", field="config") from None
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise BadInput(f"{cfg}: {_describe(exc)}", field="config") from None
