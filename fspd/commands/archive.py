"""``fspd movetos3``, ``fspd getfroms3`` and ``fspd verify``: S3 archives from the command line.

The S3 side takes its endpoint from ``--s3-endpoint-url`` or, as botocore reads it,
AWS_ENDPOINT_URL_S3; ``--endpoint-url`` stays the EBS/EC2 endpoint, as in the other verbs.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from fspd.commands.transfer import execute, global_options, parse_tags
from fspd.display import human_bytes
from fspd.errors import BadInput, TransferFailed

# The handlers import the job model, S3 and the engine when they run (see fspd/cli.py).


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "movetos3", help="archive a snapshot, file or block device in S3",
        description="Archive SOURCE (a snapshot id, or a file/device path) as "
        "s3://BUCKET/PREFIX: zstd segments with SHA-256 checksums and a manifest written last.")
    p.add_argument("source", metavar="SOURCE", help="snap-… or a path")
    p.add_argument("url", metavar="s3://BUCKET/PREFIX", help="where the archive goes")
    p.add_argument("--base", dest="base_snapshot_id",
                   help="archive only the blocks changed since this snapshot (needs --parent)")
    p.add_argument("--parent", dest="parent_prefix", metavar="PREFIX|s3://BUCKET/PREFIX",
                   help="the archive of --base; the new archive is incremental on it")
    p.add_argument("--storage-class")
    p.add_argument("--sse", choices=["AES256", "aws:kms"])
    p.add_argument("--kms-key-id")
    p.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--zstd-level", type=int)
    p.add_argument("--segment-blocks", type=int)
    _s3_options(p)
    global_options(p)
    p.set_defaults(handler=_cmd_movetos3)

    p = subparsers.add_parser(
        "getfroms3", help="restore an S3 archive to a file, device or new snapshot",
        description="Restore s3://BUCKET/PREFIX (and its parents) to DEST, verifying every "
        "segment and block; or, with --to-snapshot, to a new snapshot in --region.")
    p.add_argument("url", metavar="s3://BUCKET/PREFIX", help="the archive to restore")
    p.add_argument("dest", metavar="DEST", nargs="?", help="a file or block device path")
    p.add_argument("--to-snapshot", action="store_true", help="restore to a new EBS snapshot")
    p.add_argument("--format", choices=["fspd", "fsp"], default="fspd",
                   help="fsp: an archive written by FSP (its key layout)")
    p.add_argument("--allow-incomplete", action="store_true",
                   help="FSP archives: restore what exists even though blocks are missing")
    p.add_argument("--description")
    _s3_options(p)
    global_options(p)
    p.set_defaults(handler=_cmd_getfroms3)

    p = subparsers.add_parser(
        "verify", help="check an S3 archive end to end without restoring it",
        description="Check the manifest(s), that every segment exists, and every checksum "
        "(compressed object and each block), through the chain of parents.")
    p.add_argument("url", metavar="s3://BUCKET/PREFIX", help="the archive to check")
    p.add_argument("--format", choices=["fspd", "fsp"], default="fspd")
    _s3_options(p)
    g = p.add_argument_group("common options")
    g.add_argument("--config", help="settings file (default: $FSPD_CONFIG or /etc/fspd/fspd.toml)")
    g.add_argument("--profile", help="AWS profile (default: AWS_PROFILE)")
    g.add_argument("-n", "--dry-run", action="store_true",
                   help="read the manifests and list what would be checked (segments, blocks, "
                   "bytes to read), reading no segment")
    g.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(handler=_cmd_verify)


def _s3_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("S3 options")
    g.add_argument("--s3-region", help="the bucket's region (default: --region / AWS_REGION)")
    g.add_argument("--s3-endpoint-url", help="S3 endpoint (default: AWS_ENDPOINT_URL_S3)")


def _s3_spec(args: argparse.Namespace, field: str) -> dict[str, Any]:
    from fspd.archive.store import parse_s3_url

    loc = parse_s3_url(args.url, field)
    spec: dict[str, Any] = {"type": "s3", "bucket": loc.bucket, "prefix": loc.prefix}
    region = args.s3_region or getattr(args, "region", None)
    if region:
        spec["region"] = region
    if args.profile:
        spec["profile"] = args.profile
    if args.s3_endpoint_url:
        spec["endpoint_url"] = args.s3_endpoint_url
    return spec


def _aws(args: argparse.Namespace) -> dict[str, Any]:
    return {k: getattr(args, k) for k in ("region", "profile", "endpoint_url")
            if getattr(args, k, None)}


def _cmd_movetos3(args: argparse.Namespace) -> int:
    from fspd import jobs

    if re.match(jobs.SNAPSHOT_ID_RE, args.source):
        source: dict[str, Any] = {"type": "ebs", "snapshot_id": args.source, **_aws(args)}
        if args.base_snapshot_id:
            source["base_snapshot_id"] = args.base_snapshot_id
    else:
        if args.base_snapshot_id:
            raise BadInput("--base needs a snapshot as SOURCE", field="--base")
        source = {"type": "file", "path": str(Path(args.source).absolute())}
    dest = _s3_spec(args, "destination")
    for key in ("parent_prefix", "storage_class", "sse", "kms_key_id", "zstd_level",
                "segment_blocks"):
        if getattr(args, key) is not None:
            dest[key] = getattr(args, key)
    if args.tag:
        dest["tags"] = parse_tags(args.tag)
    job: dict[str, Any] = {"source": source, "destinations": [dest]}
    if args.dry_run:
        job["dry_run"] = True
    return execute(jobs.validate(job), args)


def _cmd_getfroms3(args: argparse.Namespace) -> int:
    from fspd import jobs

    source = _s3_spec(args, "source")
    source["format"] = args.format
    if args.allow_incomplete:
        source["allow_incomplete"] = True
    if (args.to_snapshot and args.dest) or not (args.to_snapshot or args.dest or args.dry_run):
        raise BadInput("give a DEST path or --to-snapshot (one of them)", field="DEST")
    dests: list[dict[str, Any]] = []
    if args.to_snapshot:
        dest: dict[str, Any] = {"type": "ebs", **_aws(args)}
        if args.description:
            dest["description"] = args.description
        dests.append(dest)
    elif args.dest:
        dests.append({"type": "file", "path": str(Path(args.dest).absolute())})
    job: dict[str, Any] = {"source": source, "destinations": dests}
    if args.dry_run:  # without a DEST: count what the archive holds
        job["dry_run"] = True
    return execute(jobs.validate(job), args)


def _cmd_verify(args: argparse.Namespace) -> int:
    from fspd import config, jobs, loop
    from fspd.archive.store import parse_s3_url
    from fspd.archive.verify import run_verify
    from fspd.run import target_for

    spec = jobs.S3SourceSpec.model_validate(_s3_spec(args, "url") | {"format": args.format})
    settings = config.load(args.config)
    loc = parse_s3_url(args.url, "url")
    report = loop.run(run_verify(settings, target_for(spec), loc, args.format,
                                 dry_run=args.dry_run))
    if not report["ok"]:
        failed = TransferFailed(f"{report['url']}: {report['problem_count']} problem(s); "
                                f"first: {report['problems'][0]}")
        # --json prints the report and the error as one object
        failed.json_details = report  # type: ignore[attr-defined]
        if not args.json and not args.quiet:
            print(_summary(report))
        raise failed
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    elif not args.quiet:
        print(_summary(report))
    return 0


def _summary(report: dict[str, Any]) -> str:
    lines = []
    if report.get("dry_run"):
        for a in report["archives"]:
            lines.append(f"{a['url']}: would verify {a['segments_to_verify']} segments, "
                         f"{a['blocks_to_verify']} blocks"
                         + (f", {human_bytes(a['stored_bytes'])} to read"
                            if a.get("stored_bytes") is not None else "")
                         + (f" (parent {a['parent']})" if a.get("parent") else ""))
        plan = report["plan"]
        lines.append(f"dry run: {plan['segments']} segments, {plan['blocks']} blocks, "
                     f"{human_bytes(plan['bytes_to_read'])} would be read")
    else:
        for a in report["archives"]:
            lines.append(f"{a['url']}: {a['segments_verified']} segments, "
                         f"{a['blocks_verified']} blocks verified"
                         + (f" (parent {a['parent']})" if a.get("parent") else ""))
    if report["ok"]:
        lines.append(f"{report['url']}: "
                     + ("manifests OK; no segment was read" if report.get("dry_run") else "OK"))
    else:
        lines += [f"problem: {p}" for p in report["problems"]]
        more = report["problem_count"] - len(report["problems"])
        if more > 0:
            lines.append(f"… and {more} more")
    return "\n".join(lines)
