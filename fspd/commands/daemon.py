"""``fspd serve`` and its clients: submit, status, watch, cancel, pause, resume, bandwidth,
and ``fspd demo`` (the whole thing on the bundled emulator)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fspd import config_file
from fspd.daemon import view
from fspd.daemon.client import Client, DaemonUnavailable, exit_code_for, request
from fspd.daemon.states import TERMINAL
from fspd.display import printable
from fspd.errors import BadInput, ExitCode

if TYPE_CHECKING:  # the commands that need them import them (see fspd/cli.py)
    from fspd import config


def _conn(p: argparse.ArgumentParser, *, spool: bool = False) -> None:
    g = p.add_argument_group("daemon")
    g.add_argument("--config", help="settings file (default: $FSPD_CONFIG or /etc/fspd/fspd.toml)")
    g.add_argument("--socket", help="control socket (default: daemon.socket_path, or "
                   "$FSPD_SOCKET)")
    if spool:
        g.add_argument("--spool", help="spool directory (default: daemon.spool_dir, or "
                       "$FSPD_SPOOL)")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("serve", help="run the daemon (spool, control socket, systemd)",
                              description="Run jobs dropped into the spool, answer on the "
                              "control socket. Flags override the config file.")
    p.add_argument("--config", help="settings file (default: $FSPD_CONFIG or /etc/fspd/fspd.toml)")
    p.add_argument("--spool", dest="spool_dir", type=Path)
    p.add_argument("--state-dir", type=Path)
    p.add_argument("--socket", dest="socket_path", type=Path)
    p.add_argument("--socket-group")
    p.add_argument("--control-group")
    p.add_argument("--max-jobs", type=int)
    p.add_argument("--workers", type=int, metavar="N",
                   help="worker processes that run the jobs (default: daemon.workers; "
                   "0 = one per usable CPU)")
    p.add_argument("--bandwidth", dest="bandwidth", metavar="RATE",
                   help="shared limit in bytes/s, like 100M or 1.5G; K, M, G are binary "
                   "(100M = 100 MiB/s = 100*2^20 B/s); 0 = unlimited")
    p.add_argument("--rescan-interval", dest="rescan_interval_s", type=float, metavar="S")
    p.add_argument("--stop-timeout", dest="stop_timeout_s", type=float, metavar="S")
    p.add_argument("--serve-log-level", dest="serve_log_level",
                   choices=["debug", "info", "warning", "error"],
                   help="log level (default: log_level from the config file)")
    p.set_defaults(handler=_cmd_serve)

    p = subparsers.add_parser("submit", help="validate a job file and put it in the spool")
    p.add_argument("jobfile", help="job file: .toml or .json (checked before it is queued)")
    p.add_argument("--wait", action="store_true", help="wait for the job to finish (progress "
                   "bars on a TTY); the exit code is the job's")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--fleet", action="store_true", help="enqueue the job for the fleet "
                   "([fleet] in the settings file; see `fspd fleet`) instead of the spool")
    _conn(p, spool=True)
    p.set_defaults(handler=_cmd_submit)

    p = subparsers.add_parser("status", help="the daemon's jobs, or one job in detail")
    p.add_argument("job", nargs="?", help="a job id or a unique prefix of one (default: all)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--fleet", action="store_true", help="every job of the fleet, across "
                   "hosts (its DynamoDB table), instead of this daemon's")
    _conn(p)
    p.set_defaults(handler=_cmd_status)

    p = subparsers.add_parser("watch", help="live progress (bars on a TTY, NDJSON when piped)")
    p.add_argument("job", nargs="?", help="a job id or a unique prefix of one: the command "
                   "ends when it finishes, with its exit code (with -q, silently)")
    p.add_argument("--json", action="store_true", help="NDJSON even on a TTY")
    _conn(p)
    p.set_defaults(handler=_cmd_watch)

    for action, text in (("cancel", "cancel a job (it moves to failed/)"),
                         ("pause", "pause a job (blocks in flight finish first)"),
                         ("resume", "resume a paused job")):
        p = subparsers.add_parser(action, help=text)
        p.add_argument("job", help="a job id or a unique prefix of one")
        _conn(p)
        p.set_defaults(handler=_cmd_action, action=action)

    p = subparsers.add_parser("bandwidth", help="change the shared bandwidth limit now")
    p.add_argument("rate", help="bytes/s, like 100M or 1.5G: K, M, G are binary, whether "
                   "written M, MB or MiB (100M = 100 MiB/s = 100*2^20 B/s); 0 or unlimited")
    _conn(p)
    p.set_defaults(handler=_cmd_bandwidth)

    p = subparsers.add_parser("demo", help="run the daemon on the bundled emulator with "
                              "example jobs, and check their results")
    p.add_argument("--dir", type=Path, default=Path("demo-run"),
                   help="working directory (default: ./demo-run)")
    p.add_argument("--examples", type=Path, help="job templates (default: config/examples)")
    p.set_defaults(handler=_cmd_demo)


# --- helpers -----------------------------------------------------------------------------

def _settings(args: argparse.Namespace) -> config.Settings:
    from fspd import config

    return config.load(getattr(args, "config", None))


def socket_path(args: argparse.Namespace) -> str:
    if getattr(args, "socket", None):
        return str(args.socket)
    if os.environ.get("FSPD_SOCKET"):
        return os.environ["FSPD_SOCKET"]
    # The socket's path alone: the rest of the file is the daemon's to validate.
    return str(config_file.socket_path(getattr(args, "config", None)))


def spool_dir(args: argparse.Namespace) -> Path:
    if getattr(args, "spool", None):
        return Path(args.spool)
    if os.environ.get("FSPD_SPOOL"):
        return Path(os.environ["FSPD_SPOOL"])
    return Path(_settings(args).daemon.spool_dir)


# --- serve -------------------------------------------------------------------------------

def _cmd_serve(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from fspd import config, log
    from fspd.daemon.service import serve, with_overrides

    overrides: dict[str, Any] = {
        k: getattr(args, k) for k in ("spool_dir", "state_dir", "socket_path", "socket_group",
                                      "control_group", "max_jobs", "rescan_interval_s",
                                      "stop_timeout_s", "workers")}
    if args.bandwidth is not None:
        overrides["bandwidth_bytes_per_s"] = view.parse_rate(args.bandwidth)
    explicit = getattr(args, "log_level_given", False) or args.verbose or args.quiet
    overrides["log_level"] = args.serve_log_level or (args.log_level if explicit else None)
    try:
        settings = with_overrides(config.load(args.config), overrides)
    except ValidationError as exc:  # a flag's value is out of range
        first = exc.errors()[0]
        flag = "--" + str(first["loc"][-1]).removesuffix("_s").replace("_", "-")
        raise BadInput(first["msg"], field=flag) from None
    try:
        log.configure(settings.log_level, json=args.log_json)
    except KeyError:
        raise BadInput(f"{settings.log_level!r} is not one of debug, info, warning, error",
                       field="log_level") from None
    return serve(settings, config_path=args.config, overrides=overrides,
                 log_json=args.log_json)


# --- clients -----------------------------------------------------------------------------

def _cmd_submit(args: argparse.Namespace) -> int:
    from fspd import jobs, loop
    from fspd.daemon.spool import Spool

    path = Path(args.jobfile)
    try:
        if path.stat().st_size > jobs.MAX_JOB_FILE_BYTES:
            raise BadInput(f"job file is over {jobs.MAX_JOB_FILE_BYTES} bytes", field="jobfile")
        data = path.read_bytes()
    except OSError as exc:
        raise BadInput(f"cannot read {path}: {exc.strerror}", field="jobfile") from None
    jobs.parse(data, path.name, fleet=args.fleet)  # refuse a bad job here rather than in failed/
    if args.fleet:
        if args.wait:
            raise BadInput("--wait is for the local daemon; follow a fleet job with "
                           "`fspd status --fleet`", field="--wait")
        from fspd.commands.fleet import submit_fleet

        return submit_fleet(args, data, path.name)
    spool = Spool(spool_dir(args))
    sock = socket_path(args) if args.wait else None
    if sock is not None:  # fail before submitting if nobody will run it
        request(sock, "GET", "/v1/status")
    try:
        if not spool.box("new").is_dir():
            raise BadInput(f"{spool.root} is not a spool (no new/ directory); is the daemon "
                           "configured with another daemon.spool_dir?", field="--spool")
        name = spool.submit(data, path.name)
    except PermissionError as exc:
        raise DaemonUnavailable(
            f"permission denied on {exc.filename or spool.root}: submitting needs write access "
            "to the spool's tmp/ and new/ (ask for membership of the spool's group)") from None
    except OSError as exc:
        raise DaemonUnavailable(f"cannot submit into {spool.root}: {exc.strerror or exc}"
                                ) from None
    if not args.wait:
        print(json.dumps({"job": name}) if args.json else name)
        return 0
    if not args.json and not args.quiet:
        print(name, file=sys.stderr)
    assert sock is not None
    mode = "quiet" if args.json or args.quiet or not sys.stderr.isatty() else "bars"
    return loop.run(_follow(sock, name, mode=mode, final=not args.quiet or args.json,
                            as_json=args.json))


def _cmd_status(args: argparse.Namespace) -> int:
    if args.fleet:
        from fspd.commands.fleet import status_fleet

        return status_fleet(args)
    sock = socket_path(args)
    if args.job:
        status, data = {}, request(sock, "GET", f"/v1/jobs/{args.job}")
    else:
        status = request(sock, "GET", "/v1/status")
        data = request(sock, "GET", "/v1/jobs")["jobs"]
    if args.json:
        print(json.dumps(data if args.job else {**status, "jobs": data}, indent=2,
                         default=str))
    elif args.job:
        print(view.job_detail(data))
    else:
        print(view.status_table(status, data))
    return 0


def _cmd_watch(args: argparse.Namespace) -> int:
    from fspd import loop

    mode = "ndjson" if args.json or not sys.stderr.isatty() else "bars"
    if args.quiet and not args.json:  # wait for the job without showing it; its exit code
        mode = "quiet"
    try:
        return loop.run(_follow(socket_path(args), args.job, mode=mode, final=False))
    except KeyboardInterrupt:
        return 0


async def _follow(sock: str, job: str | None, *, mode: str, final: bool,
                  as_json: bool = False) -> int:
    """Show events (``mode``: bars, ndjson or quiet) until ``job`` ends, or forever without
    one; with ``final``, print the job's record at the end. Returns the job's exit code."""
    bars = view.Bars() if mode == "bars" else None
    last: dict[str, Any] | None = None
    try:
        async with Client(sock) as client:
            async for event in client.events(job):
                if mode == "ndjson":
                    view.ndjson(event)
                elif bars is not None:
                    bars.update(event)
                if job and event.get("state") in TERMINAL:
                    last = event
                    break
            if job and last is not None and final:
                detail = await client.call("GET", f"/v1/jobs/{last['job']}")
                if as_json:  # the job's record, and the exit code this command returns
                    print(json.dumps({**detail, "exit_code": exit_code_for(last)}, indent=2,
                                     default=str))
                else:
                    if bars is not None:
                        bars.close()
                        bars = None
                    print(view.job_detail(detail))
    finally:
        if bars is not None:
            bars.close()
    if job is None:
        return 0
    if last is None:
        print("fspd: the daemon stopped before the job finished; it will run again at the "
              "next start", file=sys.stderr)
        return int(ExitCode.NOT_RUNNING)
    return exit_code_for(last)


def _cmd_action(args: argparse.Namespace) -> int:
    result = request(socket_path(args), "POST", f"/v1/jobs/{args.job}/{args.action}")
    print(f"{printable(result['job'])}: {args.action} requested ({printable(result['state'])})")
    return 0


def _cmd_bandwidth(args: argparse.Namespace) -> int:
    rate = view.parse_rate(args.rate)
    result = request(socket_path(args), "PUT", "/v1/bandwidth", {"bytes_per_s": rate})
    limit = result["bytes_per_s"]
    from fspd.display import human_bytes

    print(f"bandwidth limit: {f'{human_bytes(limit)}/s ({limit} B/s)' if limit else 'unlimited'}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from fspd.daemon.demo import run_demo

    return run_demo(args.dir, examples=args.examples, log_json=args.log_json)
