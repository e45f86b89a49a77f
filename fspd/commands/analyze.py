"""``fspd analyze SNAP… | --volume vol-…``: how big each snapshot of a lineage is, how much
it changed, what deleting it would free, and what it costs a month (see fspd/lineage.py for
how the figures are derived). Heavy modules are imported by the handler, not at start-up."""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path
from typing import Any

from fspd.errors import BadInput

COLUMNS = ("snapshot_id", "start_time", "volume_size_gib", "allocated_blocks",
           "allocated_bytes", "changed_blocks", "changed_bytes", "new_blocks", "new_bytes",
           "unique_blocks", "unique_bytes", "monthly_cost_usd")


def register(subparsers: Any) -> None:
    text = ("per snapshot of a lineage: allocated size, changed size against the previous "
            "one, blocks unique to it (what deleting it frees) and monthly storage cost")
    p = subparsers.add_parser("analyze", help=text, description=text + ". The snapshots are "
                              "taken in time order; 'unique' counts blocks no other snapshot "
                              "given refers to (EBS's own accounting may differ: see README).")
    p.add_argument("snapshot_ids", nargs="*", metavar="SNAPSHOT",
                   help="snapshots of one volume (snap-…), any order")
    p.add_argument("--volume", metavar="VOLUME_ID",
                   help="instead: every completed snapshot of this volume (vol-…)")
    p.add_argument("--price", type=float, metavar="USD",
                   help="USD per GiB-month of snapshot storage (default: [analyze] "
                   "price_per_gib_month, the us-east-1 list price)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print the figures as JSON")
    out.add_argument("--csv", action="store_true", help="print the figures as CSV")
    p.add_argument("--plot", metavar="FILE.svg",
                   help="also write a chart of size and change rate over time (SVG)")
    g = p.add_argument_group("common options")
    g.add_argument("-n", "--dry-run", action="store_true",
                   help="only say which snapshots would be analysed, in which order")
    g.add_argument("--config", help="settings file (default: $FSPD_CONFIG or /etc/fspd/fspd.toml)")
    g.add_argument("-r", "--region", help="AWS region (default: AWS_REGION / profile / us-east-1)")
    g.add_argument("--profile", help="AWS profile (default: AWS_PROFILE)")
    g.add_argument("--endpoint-url", help="EBS/EC2 endpoint (e.g. the bundled emulator)")
    p.set_defaults(handler=_cmd_analyze)


def _check_args(args: argparse.Namespace) -> None:
    if args.volume and args.snapshot_ids:
        raise BadInput("give snapshots or --volume, not both", field="--volume")
    if not args.volume and not args.snapshot_ids:
        raise BadInput("give one or more snapshots (snap-…) or --volume vol-…",
                       field="SNAPSHOT")
    if args.volume is not None and not args.volume.startswith("vol-"):
        raise BadInput(f"{args.volume!r} is not a volume id (vol-…)", field="--volume")
    for sid in args.snapshot_ids:
        if not sid.startswith("snap-"):
            raise BadInput(f"{sid!r} is not a snapshot id (snap-…)", field="SNAPSHOT")
    if args.price is not None and not 0 <= args.price <= 100:
        raise BadInput("must be 0..100 USD per GiB-month", field="--price")
    if args.plot is not None:
        plot = Path(args.plot)
        if plot.suffix.lower() != ".svg":
            raise BadInput(f"{args.plot} does not end in .svg", field="--plot")
        if not plot.absolute().parent.is_dir():
            raise BadInput(f"{plot.absolute().parent} is not a directory", field="--plot")


def _cmd_analyze(args: argparse.Namespace) -> int:
    _check_args(args)
    from fspd import config, loop

    settings = config.load(args.config)
    price = settings.analyze.price_per_gib_month if args.price is None else args.price
    figures = loop.run(_analyze(args, settings, price))
    if args.dry_run:
        return _dry_run(args, figures)
    rows = [f.as_dict() for f in figures]
    report = {
        "snapshots": rows,
        "total": {key: sum(r[key] for r in rows) for key in (
            "new_blocks", "new_bytes", "unique_blocks", "unique_bytes")},
        "price_per_gib_month_usd": price,
        "price_source": "--price" if args.price is not None
        else f"[analyze] price_per_gib_month, recorded {settings.analyze.price_date}",
    }
    report["total"]["monthly_cost_usd"] = round(sum(r["monthly_cost_usd"] for r in rows), 4)
    if args.plot:
        from fspd.lineage_plot import svg

        title = f"lineage of {rows[-1]['snapshot_id']}" if not args.volume else args.volume
        try:
            Path(args.plot).write_text(svg(rows, title), encoding="utf-8")
        except OSError as exc:
            raise BadInput(f"cannot write {args.plot}: {exc.strerror}", field="--plot") from None
    if args.json:
        print(json.dumps(report, indent=2))
    elif args.csv:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore",
                                lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        sys.stdout.write(buf.getvalue())
    elif not getattr(args, "quiet", False):
        print(_table(report))
    return 0


async def _analyze(args: argparse.Namespace, settings: Any, price: float) -> list[Any]:
    from fspd import lineage
    from fspd.aws import AwsTarget
    from fspd.context import job_context
    from fspd.endpoints.registry import default_region

    target = AwsTarget(region=args.region or default_region(args.profile),
                       profile=args.profile, endpoint_url=args.endpoint_url)
    async with job_context("analyze", settings, name="analyze") as ctx:
        snaps = await lineage.resolve(ctx, target, args.snapshot_ids, args.volume)
        if args.dry_run:
            return snaps
        return await lineage.analyze(ctx, target, snaps, price)


def _dry_run(args: argparse.Namespace, snaps: list[dict[str, Any]]) -> int:
    """The lineage as DescribeSnapshots gives it, oldest first; nothing is listed."""
    from fspd.lineage import iso

    rows = [{"snapshot_id": s["SnapshotId"], "start_time": iso(s["StartTime"]),
             "volume_size_gib": int(s["VolumeSize"])} for s in snaps]
    if args.json or args.csv:
        print(json.dumps({"dry_run": True, "snapshots": rows, "listings": len(rows)},
                         indent=2))
    elif not getattr(args, "quiet", False):
        for r in rows:
            print(f"{r['snapshot_id']}  {r['start_time']}  {r['volume_size_gib']} GiB")
        print(f"dry run: would stream {len(rows)} listings (ListSnapshotBlocks for the first, "
              "ListChangedBlocks against the previous for each other)")
    return 0


def _table(report: dict[str, Any]) -> str:
    from fspd.display import human_bytes

    head = ("SNAPSHOT", "STARTED (UTC)", "ALLOCATED", "CHANGED", "UNIQUE", "USD/MONTH")
    lines = [head]
    for r in report["snapshots"]:
        lines.append((r["snapshot_id"], r["start_time"][:19].replace("T", " "),
                      human_bytes(r["allocated_bytes"]), human_bytes(r["changed_bytes"]),
                      human_bytes(r["unique_bytes"]), f"{r['monthly_cost_usd']:.2f}"))
    total = report["total"]
    lines.append(("total", "", "", human_bytes(total["new_bytes"]) + " stored",
                  human_bytes(total["unique_bytes"]), f"{total['monthly_cost_usd']:.2f}"))
    widths = [max(len(row[i]) for row in lines) for i in range(len(head))]
    out = ["  ".join(cell.ljust(w) if i < 2 else cell.rjust(w)
                     for i, (cell, w) in enumerate(zip(row, widths, strict=True))).rstrip()
           for row in lines]
    out.append(f"cost at {report['price_per_gib_month_usd']} USD per GiB-month "
               f"({report['price_source']}); unique = freed if deleted, relative to the "
               "snapshots analysed")
    return "\n".join(out)
