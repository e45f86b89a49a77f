"""fspd's settings: one TOML file (``config/fspd.toml`` documents every key and its default).

Every queue, pool, retry and timeout in fspd takes its bound from here.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from fspd import config_file
from fspd.errors import BadInput


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
    # Threads for compression and file I/O (they release the GIL).
    worker_threads: int = Field(4, ge=1, le=64)
    # Verify fetched blocks' SHA-256 on threads beside the event loop (fspd/hashing.py):
    # "auto" when more than two CPUs are usable (os.sched_getaffinity); hash_threads of them,
    # 0 = auto (usable CPUs - 1, at most 4).
    hash_in_threads: bool | Literal["auto"] = "auto"
    hash_threads: int = Field(0, ge=0, le=64)
    # Read file/device sources (pread, zero test, SHA-256) on worker_threads threads: "auto"
    # reads a regular file on the loop when at most 2 CPUs are usable, else on threads
    # (block devices always: a read waits on the device); fspd/endpoints/files.py says why.
    read_in_threads: bool | Literal["auto"] = "auto"
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


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) on a loopback address; ValueError otherwise."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"{value!r} is not HOST:PORT (like 127.0.0.1:8485)")
    host = host.removeprefix("[").removesuffix("]")
    if host.lower() != "localhost":
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ValueError(f"{host!r} is not a loopback address: the web view has no login "
                             "for reading, so it listens on 127.0.0.0/8, [::1] or localhost "
                             "only; from another machine use ssh -L (see `fspd ui`)")
    return host, int(port_text)

class AnalyzeSettings(_Section):
    # ``fspd analyze``'s monthly cost: EBS snapshot storage, standard tier, USD per GiB-month
    # (AWS's "GB-month"), list price in us-east-1 as recorded on price_date. Set your region's.
    price_per_gib_month: float = Field(0.05, ge=0, le=100)
    price_date: str = Field("2026-12-01", max_length=40)
    describe_page_size: int = Field(1000, ge=5, le=1000)  # --volume: DescribeSnapshots page


class DaemonSettings(_Section):
    """``fspd serve``. Keys marked (reload) change on SIGHUP; the others need a restart."""

    spool_dir: Path = Path("/var/spool/fspd")  # tmp/ new/ active/ done/ failed/ live here
    state_dir: Path = Path("/var/lib/fspd")  # per-job state (checkpoints)
    socket_path: Path = config_file.DEFAULT_SOCKET_PATH  # control socket (HTTP + JSON)
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
    # The web view (/ui/) on a loopback TCP port too, read-only without the token in
    # state_dir (see fspd/daemon/ui.py); None = only on the control socket. Restart to change.
    http_listen: str | None = None

    @field_validator("http_listen")
    @classmethod
    def _loopback(cls, value: str | None) -> str | None:
        if value is not None:
            parse_listen(value)
        return value
    # Worker processes that run the jobs; 0 = one per CPU the service may use
    # (os.sched_getaffinity). Restart to change.
    workers: int = Field(0, ge=0, le=256)


class FleetSettings(_Section):
    """Several hosts sharing one queue of jobs (docs: README "A fleet of hosts"). The names
    are the fleet's SQS queue, its dead-letter queue, its DynamoDB table and the S3 prefix of
    its checkpoints; the section left out = no fleet."""

    queue: str = Field(pattern=r"^[A-Za-z0-9_-]{1,80}$")
    dlq: str | None = Field(None, pattern=r"^[A-Za-z0-9_-]{1,80}$")  # None = queue + "-dlq"
    table: str = Field(pattern=r"^[A-Za-z0-9_.-]{3,255}$")
    bucket: str  # s3://BUCKET[/PREFIX]
    region: str | None = Field(None, pattern=r"^[a-z]{2}(-[a-z]+)+-\d+$")  # None = AWS's
    profile: str | None = None
    lease_s: float = Field(300.0, ge=10, le=43_200)  # a job's lease (and message visibility)
    heartbeat_s: float = Field(60.0, ge=1, le=3600)  # renew the lease this often
    max_receive_count: int = Field(5, ge=1, le=1000)  # deliveries before the DLQ
    receive_wait_s: int = Field(20, ge=0, le=20)  # SQS long poll (0..20)
    # This host's name in the fleet: the owner it writes in the table (with its pid), and
    # what ``{host}`` in a fleet job's file destination path becomes. Default: the hostname.
    host: str = Field(default_factory=socket.gethostname, pattern=r"^[A-Za-z0-9._-]{1,64}$")
    # Pace EBS Direct requests at transfer.per_account_rps / N, N the fleet's hosts running
    # jobs (a registry item in the table); false = each host paces at all of it
    share_account_rps: bool = True
    # A spool directory (tmp/ new/ active/ done/ failed/, as daemon.spool_dir) whose job
    # files `fspd serve` enqueues into the fleet, as `fspd submit --fleet` does; None or ""
    # = none. Not daemon.spool_dir. Restart to change.
    spool_dir: Path | None = None

    @field_validator("spool_dir", mode="before")
    @classmethod
    def _empty_is_off(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("spool_dir")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_absolute():
            raise ValueError(f"{str(value)!r} is not an absolute path")
        return value

    @field_validator("bucket")
    @classmethod
    def _s3_url(cls, value: str) -> str:
        if not re.fullmatch(r"s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?", value):
            raise ValueError(f"{value!r} is not s3://BUCKET[/PREFIX] (a bucket name has 3 to "
                             "63 lowercase letters, digits, dots and hyphens)")
        return value

    @model_validator(mode="after")
    def _renew_in_time(self) -> FleetSettings:
        if self.heartbeat_s * 2 > self.lease_s:
            raise ValueError("heartbeat_s must be at most half of lease_s (a renewal can be "
                             "late once without losing the job)")
        return self

    @property
    def dlq_name(self) -> str:
        return self.dlq or f"{self.queue}-dlq"

    @property
    def checkpoint_bucket(self) -> str:
        return self.bucket.removeprefix("s3://").partition("/")[0]

    @property
    def checkpoint_prefix(self) -> str:
        prefix = self.bucket.removeprefix("s3://").partition("/")[2].strip("/")
        return f"{prefix}/" if prefix else ""


class Settings(_Section):
    transfer: TransferSettings = TransferSettings()
    retry: RetrySettings = RetrySettings()
    snapshot: SnapshotSettings = SnapshotSettings()
    paths: PathSettings = PathSettings()
    aws: AwsSettings = AwsSettings()
    s3: S3Settings = S3Settings()
    daemon: DaemonSettings = DaemonSettings()
    analyze: AnalyzeSettings = AnalyzeSettings()
    fleet: FleetSettings | None = None  # absent = this host is not part of a fleet
    log_level: Literal["debug", "info", "warning", "error"] = "info"


def _describe(err: ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "(top level)"
    return f"{where}: {first['msg']}"


def load(path: Path | str | None = None) -> Settings:
    """Load settings from ``path``, $FSPD_CONFIG, or /etc/fspd/fspd.toml; defaults otherwise."""
    found = config_file.read(path)
    if found is None:
        return Settings()
    cfg, data = found
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise BadInput(f"{cfg}: {_describe(exc)}", field="config") from None
