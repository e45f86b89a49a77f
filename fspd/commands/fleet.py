"""``fspd fleet init`` and ``fspd fleet retry``, and the fleet side of ``fspd submit --fleet``
and ``fspd status --fleet`` (fspd/commands/daemon.py hands those over)."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from fspd.display import printable
from fspd.errors import BadInput, PermissionProblem, TransferFailed

if TYPE_CHECKING:  # the handlers import them (see fspd/cli.py)
    from fspd.config import FleetSettings, Settings
    from fspd.fleet.services import Services

T = TypeVar("T")
_DENIED = ("AccessDenied", "UnrecognizedClient", "InvalidClientTokenId", "ExpiredToken",
           "InvalidAccessKeyId", "SignatureDoesNotMatch")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("fleet", help="several hosts sharing one queue of jobs (SQS, "
                              "DynamoDB, S3)", description="A fleet of fspd hosts: jobs in "
                              "SQS, one DynamoDB item per job, checkpoints in S3.")
    sub = p.add_subparsers(dest="fleet_command", metavar="ACTION", required=True,
                           help="init: create or check the fleet's queue, table and prefix; "
                           "retry: queue a dead-lettered job again")
    q = sub.add_parser("init", help="create (or check) the queue, its DLQ, the table and the "
                       "checkpoint prefix", description="Create what is missing; check what "
                       "exists. Names default to the [fleet] section of the settings file.")
    q.add_argument("--queue", help="SQS queue name (default: fleet.queue)")
    q.add_argument("--dlq", help="dead-letter queue name (default: fleet.dlq, or QUEUE-dlq)")
    q.add_argument("--table", help="DynamoDB table name (default: fleet.table)")
    q.add_argument("--bucket", help="s3://BUCKET/PREFIX of the checkpoints; the bucket must "
                   "exist (default: fleet.bucket)")
    q.add_argument("--region", help="region of the three (default: fleet.region, or AWS's)")
    q.add_argument("--max-receive-count", type=int, metavar="N",
                   help="deliveries before the DLQ (default: fleet.max_receive_count)")
    q.add_argument("--dry-run", action="store_true", help="say what would be created; "
                   "create nothing")
    q.add_argument("--json", action="store_true", help="print JSON")
    q.add_argument("--config", help="settings file (default: $FSPD_CONFIG or "
                   "/etc/fspd/fspd.toml)")
    q.set_defaults(handler=_cmd_init)

    q = sub.add_parser("retry", help="queue a dead or failed fleet job again")
    q.add_argument("job", help="the job's id (as `fspd status --fleet` lists it)")
    q.add_argument("--json", action="store_true", help="print JSON")
    q.add_argument("--config", help="settings file (default: $FSPD_CONFIG or "
                   "/etc/fspd/fspd.toml)")
    q.set_defaults(handler=_cmd_retry)


# --- helpers -----------------------------------------------------------------------------

def _settings(args: argparse.Namespace) -> Settings:
    from fspd import config

    return config.load(getattr(args, "config", None))


def _fleet(settings: Settings, overrides: dict[str, Any] | None = None) -> FleetSettings:
    from pydantic import ValidationError

    from fspd.config import FleetSettings

    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    if settings.fleet is None and not given:
        raise BadInput("no [fleet] section in the settings file (give it queue, table and "
                       "bucket, or run `fspd fleet init --queue … --table … --bucket s3://…`)",
                       field="fleet")
    base = settings.fleet.model_dump() if settings.fleet is not None else {}
    try:
        return FleetSettings.model_validate({**base, **given})
    except ValidationError as exc:
        first = exc.errors()[0]
        key = str(first["loc"][-1]) if first["loc"] else ""
        field = f"--{key.replace('_', '-')}" if key in given or (key in (
            "queue", "table", "bucket") and not base) else f"fleet.{key}"
        message = str(first["msg"]).removeprefix("Value error, ")
        raise BadInput(message, field=field if key else "fleet") from None


def _run(settings: Settings, fleet: FleetSettings,
         work: Callable[[Services], Awaitable[T]]) -> T:
    """Run ``work`` with the fleet's clients; AWS's errors as fspd's (exit 3 or 4)."""
    from botocore.exceptions import BotoCoreError, NoCredentialsError

    from fspd import loop
    from fspd.fleet.services import open_services
    from fspd.retry import ApiError, Unreachable

    async def main() -> T:
        async with open_services(settings, fleet) as svc:
            return await work(svc)

    try:
        return loop.run(main())
    except ApiError as exc:
        if any(code in exc.code for code in _DENIED):
            raise PermissionProblem(str(exc)) from None
        raise TransferFailed(str(exc)) from None
    except Unreachable as exc:
        raise TransferFailed(str(exc)) from None
    except NoCredentialsError as exc:
        raise PermissionProblem(str(exc)) from None
    except BotoCoreError as exc:
        raise TransferFailed(str(exc)) from None


# --- fleet init / retry -------------------------------------------------------------------

def _cmd_init(args: argparse.Namespace) -> int:
    from fspd.fleet import setup

    settings = _settings(args)
    fleet = _fleet(settings, {"queue": args.queue, "dlq": args.dlq, "table": args.table,
                              "bucket": args.bucket, "region": args.region,
                              "max_receive_count": args.max_receive_count})
    steps = _run(settings, fleet, lambda svc: setup.init(svc, dry_run=args.dry_run))
    if args.json:
        print(json.dumps({"dry_run": args.dry_run, "steps": [
            {"resource": s.resource, "name": s.name, "action": s.action} for s in steps]},
            indent=2))
        return 0
    if args.dry_run:
        print("dry run: nothing is created")
    for step in steps:
        print(printable(step.line()))
    return 0


def _cmd_retry(args: argparse.Namespace) -> int:
    from fspd.fleet.queue import JobQueue
    from fspd.fleet.table import JobTable

    settings = _settings(args)
    fleet = _fleet(settings)

    async def retry(svc: Services) -> str:
        await JobTable(svc.dynamodb, fleet.table).requeue(args.job)
        return await JobQueue(svc.sqs, fleet).send(args.job)

    message = _run(settings, fleet, retry)
    print(json.dumps({"job": args.job, "state": "queued", "message": message}) if args.json
          else f"{printable(args.job)}: queued again")
    return 0


# --- submit --fleet / status --fleet ---------------------------------------------------------

def submit_fleet(args: argparse.Namespace, data: bytes, filename: str) -> int:
    """Validate the job, write its item (conditionally), then send its message: a job never
    runs without its item (fspd/fleet/enqueue.py)."""
    from fspd.fleet.enqueue import enqueue
    from fspd.fleet.queue import JobQueue
    from fspd.fleet.table import JobTable

    settings = _settings(args)
    fleet = _fleet(settings)

    async def submit(svc: Services) -> tuple[str, str]:
        done = await enqueue(JobTable(svc.dynamodb, fleet.table), JobQueue(svc.sqs, fleet),
                             data, filename)
        return done.job_id, done.message_id

    job_id, message = _run(settings, fleet, submit)
    print(json.dumps({"job": job_id, "message": message}) if args.json else job_id)
    return 0


def _progress(item: dict[str, Any]) -> tuple[str, str, str]:
    """(percent, rate, ETA) of a job's progress summary, ``-`` where unknown."""
    from fspd.display import human_bytes

    p = item.get("progress") or {}
    percent, rate, eta = p.get("percent"), p.get("rate_recent_bps"), p.get("eta_s")
    done, total = p.get("bytes_done"), p.get("bytes_total")
    if percent is None and isinstance(done, int | float) and isinstance(total, int | float) \
            and total > 0:
        percent = 100 * done / total
    running = item.get("state") == "running"
    return (f"{percent:.0f}%" if isinstance(percent, int | float) else "-",
            f"{human_bytes(rate)}/s" if running and isinstance(rate, int | float) else "-",
            f"{eta:.0f}s" if running and isinstance(eta, int | float) else "-")


def status_fleet(args: argparse.Namespace) -> int:
    from fspd.fleet.table import JobTable, listing

    settings = _settings(args)
    fleet = _fleet(settings)
    items = _run(settings, fleet, lambda svc: JobTable(svc.dynamodb, fleet.table).scan())
    if args.job:
        items = [i for i in items if str(i["job"]).startswith(args.job)]
        if not items:
            raise BadInput(f"no fleet job {args.job!r} in table {fleet.table}", field="job")
    if args.json:
        print(json.dumps(listing(fleet.table, items), indent=2, default=str))
        return 0
    now = time.time()
    rows = [("JOB", "STATE", "OWNER", "ATTEMPTS", "PROGRESS", "RATE", "ETA", "LEASE",
             "REASON")]
    for i in items:
        lease = i.get("lease_until")
        rows.append((str(i["job"]), str(i["state"]), str(i.get("owner", "-")),
                     str(i.get("attempt", 0)), *_progress(i),
                     f"{max(0, float(lease) - now):.0f}s" if lease else "-",
                     str(i.get("reason") or "")))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]) - 1)]
    for r in rows:
        print(printable("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=False))
                        + "  " + r[-1]).rstrip())
    return 0
