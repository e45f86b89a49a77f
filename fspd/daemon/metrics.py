"""Prometheus text exposition (format 0.0.4) of the daemon's counters and gauges."""

from __future__ import annotations

from fspd.daemon.scheduler import STATES, Scheduler


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render(scheduler: Scheduler) -> str:
    lines: list[str] = []

    def metric(name: str, kind: str, help_text: str,
               samples: list[tuple[dict[str, str], float]]) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            label = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
            lines.append(f"{name}{{{label}}} {value:g}" if label else f"{name} {value:g}")

    counts = scheduler.counts()
    metric("fspd_jobs", "gauge", "Jobs known to the daemon, by state.",
           [({"state": s}, counts.get(s, 0)) for s in STATES])
    metric("fspd_jobs_finished_total", "counter", "Jobs finished since start, by outcome.",
           [({"outcome": k}, v) for k, v in sorted(scheduler.finished_counts.items())])
    running = scheduler.running()
    live_bytes = sum(r.progress.bytes_done for r in running)
    live_blocks = sum(r.progress.blocks_done for r in running)
    metric("fspd_bytes_total", "counter", "Bytes moved by all jobs since start.",
           [({}, scheduler.totals["bytes"] + live_bytes)])
    metric("fspd_blocks_total", "counter", "Blocks handled by all jobs since start.",
           [({}, scheduler.totals["blocks"] + live_blocks)])
    retries = scheduler.retry_totals.copy()
    for r in running:
        retries.update(r.progress.retries)
    metric("fspd_retries_total", "counter", "Retried requests, by kind.",
           [({"kind": k}, v) for k, v in sorted(retries.items())])
    in_flight: dict[str, int] = {}
    for r in running:
        for name, stage in r.progress.stages.items():
            in_flight[name] = in_flight.get(name, 0) + stage.in_flight
    metric("fspd_in_flight", "gauge", "Blocks in flight per pipeline stage, all jobs.",
           [({"stage": k}, v) for k, v in sorted(in_flight.items())])
    metric("fspd_bandwidth_limit_bytes_per_second", "gauge",
           "Shared bandwidth limit (0 = unlimited).", [({}, scheduler.bandwidth.rate)])
    metric("fspd_max_jobs", "gauge", "Jobs allowed to run at once.",
           [({}, scheduler.settings.daemon.max_jobs)])
    if scheduler.fleet_host is not None:
        host = scheduler.fleet_host
        metric("fspd_fleet_jobs_total", "counter", "What this host did with the fleet's jobs "
               "since start (taken, done, failed, fenced, cancelled, duplicate, held_elsewhere, "
               "dead_lettered, heartbeat_failed).",
               [({"host": host.host, "event": k}, v) for k, v in sorted(host.counts.items())])
        metric("fspd_fleet_account_share", "gauge", "This host's share of "
               "transfer.per_account_rps (1 / the fleet's hosts running jobs).",
               [({"host": host.host}, scheduler.pool.region.account_share)])
    return "\n".join(lines) + "\n"
