"""``fspd run`` and FSP's verbs: list, diff, download, deltadownload, upload."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fspd.commands import sizeof
from fspd.errors import BadInput, Cancelled

if TYPE_CHECKING:  # the handlers import these when they run (see fspd/cli.py)
    from fspd import config, jobs


def global_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("common options")
    g.add_argument("--config", help="settings file (default: $FSPD_CONFIG or /etc/fspd/fspd.toml)")
    g.add_argument("-r", "--region", help="AWS region (default: AWS_REGION / profile / us-east-1)")
    g.add_argument("--profile", help="AWS profile (default: AWS_PROFILE)")
    g.add_argument("--endpoint-url", help="EBS/EC2 endpoint (e.g. the bundled emulator)")
    g.add_argument("-n", "--dry-run", action="store_true",
                   help="list and plan without moving data; shows requests, cost and time")
    g.add_argument("--json", action="store_true", help="print the result as JSON")


def register(subparsers: Any) -> None:
    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        p = subparsers.add_parser(name, help=help_text, description=help_text)
        return p

    p = add("run", "run one job file (TOML or JSON) in the foreground")
    p.add_argument("jobfile", help="job file: .toml or .json (see config/examples/)")
    p.add_argument("--state-dir", help="keep a checkpoint here: an interrupted run of the "
                   "same job file resumes where it stopped")
    global_options(p)
    p.set_defaults(handler=_cmd_run)

    p = add("list", "count a snapshot's allocated blocks and bytes")
    p.add_argument("snapshot_id", help="the snapshot to list (snap-…)")
    global_options(p)
    p.set_defaults(handler=_verb("list", ["snapshot_id"]))

    p = add("diff", "count the blocks changed between two snapshots of one lineage")
    p.add_argument("first_snapshot_id", help="the older snapshot (snap-…)")
    p.add_argument("second_snapshot_id", help="the newer snapshot of the same lineage")
    global_options(p)
    p.set_defaults(handler=_verb("diff", ["first_snapshot_id", "second_snapshot_id"]))

    p = add("download", "write a snapshot to a file or block device, byte for byte")
    p.add_argument("snapshot_id", help="the snapshot to download (snap-…)")
    p.add_argument("path", help="target file (made or overwritten) or block device")
    p.add_argument("--size-of", metavar="FILE",
                   help="a snapshot is whole GiB: once verified, cut PATH back to FILE's "
                   "length (the file that was uploaded), for a byte-exact round trip")
    global_options(p)
    p.set_defaults(handler=_verb("download", ["snapshot_id", "path"]))

    p = add("deltadownload", "turn a file/device holding snapshot A into snapshot B")
    p.add_argument("first_snapshot_id", help="snapshot A, which PATH holds now")
    p.add_argument("second_snapshot_id", help="snapshot B, which PATH will hold")
    p.add_argument("path", help="the file or block device holding A")
    global_options(p)
    p.set_defaults(handler=_verb("deltadownload",
                                 ["first_snapshot_id", "second_snapshot_id", "path"]))

    p = add("upload", "make a new snapshot from a file or block device")
    p.add_argument("path", help="source file or block device")
    p.add_argument("--parent", dest="parent_snapshot_id", help="parent snapshot id")
    _snapshot_options(p)
    global_options(p)
    p.set_defaults(handler=_verb("upload", ["path", "parent_snapshot_id", *SNAPSHOT_KEYS]))

    p = add("copy", "copy a snapshot to another region and/or account, block by block")
    p.add_argument("snapshot_id", help="the snapshot to copy (snap-…)")
    _destination_options(p)
    _snapshot_options(p)
    global_options(p)
    p.set_defaults(handler=_verb("copy", ["snapshot_id", *DEST_KEYS, *SNAPSHOT_KEYS]))

    p = add("sync", "write the changes A→B onto a new snapshot whose parent C is a copy of A")
    p.add_argument("base_snapshot_id", metavar="A", help="the source snapshot already copied")
    p.add_argument("snapshot_id", metavar="B", help="the newer source snapshot to copy")
    p.add_argument("parent_snapshot_id", metavar="C",
                   help="the existing copy of A at the destination")
    _destination_options(p)
    _snapshot_options(p)
    global_options(p)
    p.set_defaults(handler=_verb("sync", ["base_snapshot_id", "snapshot_id",
                                          "parent_snapshot_id", *DEST_KEYS, *SNAPSHOT_KEYS]))

    p = add("fanout", "upload a file or device to a new snapshot in each region, reading once")
    p.add_argument("path", help="source file or block device")
    p.add_argument("destination_regions", nargs="+", metavar="REGION",
                   help="regions, or @FILE with one region per line")
    _snapshot_options(p)
    global_options(p)
    p.set_defaults(handler=_verb("fanout", ["path", "destination_regions", *SNAPSHOT_KEYS]))

    p = add("multiclone", "download a snapshot to several files or devices, fetching once")
    p.add_argument("snapshot_id", help="the snapshot to download (snap-…)")
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="targets, or @FILE with one path per line")
    p.add_argument("--drop-failed", action="store_const", const="drop",
                   dest="on_destination_failure",
                   help="carry on without a destination that fails (default: fail the job)")
    global_options(p)
    p.set_defaults(handler=_verb("multiclone", ["snapshot_id", "paths",
                                                "on_destination_failure"]))


SNAPSHOT_KEYS = ["description", "encrypted", "kms_key_arn", "timeout_minutes", "client_token"]
DEST_KEYS = ["destination_region", "destination_profile", "destination_endpoint_url",
             "destination_role_arn", "destination_external_id"]


def _snapshot_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("new snapshot")
    g.add_argument("--description")
    g.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE")
    g.add_argument("--encrypted", action=argparse.BooleanOptionalAction, default=None,
                   help="encrypt the new snapshot (default: as the source; a parent's "
                   "encryption is always inherited)")
    g.add_argument("--kms-key-arn", help="KMS key to encrypt with (implies --encrypted)")
    g.add_argument("--timeout-minutes", type=int)
    g.add_argument("--client-token", help="idempotency token: a retry lands on one snapshot")


def _destination_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("destination")
    g.add_argument("-d", "--destination-region", required=True)
    g.add_argument("--destination-profile")
    g.add_argument("--destination-endpoint-url")
    g.add_argument("--destination-role-arn", help="role to assume for the destination")
    g.add_argument("--destination-external-id")


def parse_tags(items: list[str]) -> dict[str, str]:
    """``--tag KEY=VALUE`` arguments as a dict."""
    out = {}
    for item in items:
        if "=" not in item:
            raise BadInput(f"{item!r} is not KEY=VALUE", field="--tag")
        key, value = item.split("=", 1)
        out[key] = value
    return out


def _expand_list(values: list[str], field: str) -> list[str]:
    """Arguments, where @FILE stands for the file's non-empty lines (FSP's list files)."""
    out: list[str] = []
    for value in values:
        if value.startswith("@"):
            try:
                lines = Path(value[1:]).read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as exc:
                raise BadInput(f"cannot read {value[1:]}: {exc}", field=field) from None
            out += [line.strip() for line in lines if line.strip()
                    and not line.lstrip().startswith("#")]
        else:
            out.append(value)
    return out


def _check_encryption_flags(verb: str, args: argparse.Namespace) -> None:
    """Contradictory encryption flags are named as the user typed them, before any request."""
    kms, encrypted = getattr(args, "kms_key_arn", None), getattr(args, "encrypted", None)
    flag = "--kms-key-arn" if kms else ("--encrypted" if encrypted else "--no-encrypted")
    if kms and encrypted is False:
        raise BadInput("a KMS key encrypts the snapshot: give --kms-key-arn or "
                       "--no-encrypted, not both", field="--kms-key-arn/--no-encrypted")
    parent = "C" if verb == "sync" else "--parent"
    if getattr(args, "parent_snapshot_id", None) and (kms or encrypted is not None):
        raise BadInput(f"a child snapshot takes the encryption of its parent ({parent}): "
                       f"leave out {flag}", field=f"{flag}/{parent}")


def _verb(verb: str, keys: list[str]) -> Any:
    def handler(args: argparse.Namespace) -> int:
        _check_encryption_flags(verb, args)
        data: dict[str, Any] = {"verb": verb}
        for key in keys:
            value = getattr(args, key, None)
            if value is None:
                continue
            if key == "path":
                value = str(Path(value).absolute())
            elif key == "paths":
                value = [str(Path(v).absolute()) for v in _expand_list(value, key)]
            elif key == "destination_regions":
                value = _expand_list(value, key)
            data[key] = value
        tags = getattr(args, "tag", [])
        if tags:
            data["tags"] = parse_tags(tags)
        for key in ("region", "profile", "endpoint_url"):
            if getattr(args, key, None):
                data[key] = getattr(args, key)
        if args.dry_run:
            data["dry_run"] = True
        from fspd import jobs

        spec = jobs.validate(data)
        return execute(spec, args, after=sizeof.truncate_hook(args))

    return handler


def _cmd_run(args: argparse.Namespace) -> int:
    path = Path(args.jobfile)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise BadInput(f"cannot read {path}: {exc.strerror}", field="jobfile") from None
    from fspd import jobs

    spec = jobs.parse(raw, path.name)
    if args.dry_run and not spec.dry_run:
        spec = spec.model_copy(update={"dry_run": True})
    state_dir = job_id = None
    if args.state_dir:
        # The job's identity is its name, or its file's content: the same job file resumes.
        job_id = spec.name or "job-" + hashlib.sha256(raw).hexdigest()[:16]
        state_dir = Path(args.state_dir) / job_id
    return execute(spec, args, job_id=job_id, state_dir=state_dir)


def operator_endpoints(settings: config.Settings, args: argparse.Namespace
                       ) -> config.Settings:
    """Endpoints given on the command line are the operator's choice: allow them."""
    from fspd import endpoint_policy

    flags = [getattr(args, key, None) for key in ("endpoint_url", "destination_endpoint_url",
                                                  "s3_endpoint_url")]
    given = tuple(p for p in map(endpoint_policy.exact_pattern, filter(None, flags)) if p)
    if not given:
        return settings
    aws = settings.aws.model_copy(update={
        "allow_endpoints": (*settings.aws.allow_endpoints, *given)})
    return settings.model_copy(update={"aws": aws})


def execute(spec: jobs.JobSpec, args: argparse.Namespace, *, job_id: str | None = None,
             state_dir: Path | None = None,
             after: Callable[[dict[str, Any]], None] | None = None) -> int:
    """Run ``spec`` in the foreground and print its result; ``after`` may amend the result
    of a successful run before it is printed."""
    from fspd import config, display, loop
    from fspd.progress import Progress
    from fspd.run import run_job

    settings = operator_endpoints(config.load(args.config), args)
    progress = Progress()
    show = sys.stderr.isatty() and not args.quiet and not args.json

    async def main() -> dict[str, Any]:
        bar = (asyncio.create_task(display.show_progress(progress, label=spec.verb))
               if show else None)
        # SIGTERM stops a foreground job as Ctrl-C does: its destinations are aborted and
        # the error line says what was left behind.
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        try:
            return await run_job(spec, settings, progress=progress, job_id=job_id,
                                 state_dir=state_dir)
        finally:
            if bar:
                bar.cancel()
                await asyncio.gather(bar, return_exceptions=True)

    try:
        result = loop.run(main())
    except (KeyboardInterrupt, asyncio.CancelledError):
        left = "; ".join(progress.left_behind)
        raise Cancelled("interrupted" + (f"; {left}" if left else "")) from None
    if after is not None:
        after(result)
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True, default=str))
    elif not args.quiet:
        print(display.summary(result))
    return 0
