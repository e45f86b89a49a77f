"""Charts of the benchmark: ``python -m tests.bench --plot DIR`` (after the usual run, it
measures a latency sweep and RSS at three volume sizes, saves every figure in
``DIR/bench.json`` and draws the charts), or ``python -m tests.bench.plots DIR/bench.json DIR``
to draw them again from saved figures.

Charts, each as PNG and SVG:

* ``throughput``: download blocks/s against requests in flight at 0, 20 and 100 ms of
  GetSnapshotBlock latency, with the latency bound min(in-flight / latency, 1000/s);
* ``cpu``: CPU ms per block, fspd against the floor and the previous approaches;
* ``rss``: peak RSS against volume size (1, 4, 16 TiB), listing and downloading.

matplotlib is the ``[bench]`` extra (``pip install -e '.[bench]'``); nothing else needs it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

LATENCIES_MS = (0, 20, 100)
IN_FLIGHT = (1, 2, 5, 10, 25, 50, 100)
SIZES_GIB = (1024, 4096, 16384)
RSS_TARGET_MIB = 256
CAP = 1000  # AWS's GetSnapshotBlock requests/s per snapshot
FORMATS = ("png", "svg")
COLOURS = {0: "#2a7f3f", 20: "#1f5fa8", 100: "#c0392b"}
CONTENDERS = ("floor", "fspd", "aiobotocore path", "FSP-style boto3 threads")


class PlotError(RuntimeError):
    """matplotlib is missing, or the figures cannot be drawn."""


def need_matplotlib() -> Any:
    """pyplot on the Agg backend, or a one-line error naming the extra to install."""
    try:
        import matplotlib
    except ImportError:
        raise PlotError("--plot needs matplotlib: pip install -e '.[bench]'") from None
    matplotlib.use("Agg")
    matplotlib.rcParams.update({"svg.fonttype": "none", "svg.hashsalt": "fspd-bench",
                                "figure.dpi": 100, "font.size": 10})
    import matplotlib.pyplot as plt

    return plt


# -- measuring ---------------------------------------------------------------------------

def remember_memory(bench: Any) -> None:
    """Keep ``bench.memory``'s results, so a size the usual run measured (1 TiB, and 16 TiB
    with --big) is not listed a second time for the chart."""
    measure_memory = bench.memory
    seen: dict[tuple[Any, ...], dict[str, Any]] = {}

    def memory(*key: Any) -> dict[str, Any]:
        if key not in seen:
            seen[key] = measure_memory(*key)
        return seen[key]

    bench.memory = memory


async def measure(bench: Any, args: argparse.Namespace) -> dict[str, Any]:
    """The figures the charts need beyond the usual run (its CPU rows are in ``bench``)."""
    quick = args.quick
    in_flight = (1, 5, 25) if quick else IN_FLIGHT
    seconds, most = (0.5, 60) if quick else (2.0, 1000)
    sweep = []
    for latency in LATENCIES_MS:
        for n in in_flight:
            bound = CAP if latency == 0 else min(n * 1000 / latency, CAP)
            blocks = max(10, min(most, int(bound * seconds)))
            r = await bench.latency(latency, n, blocks)
            sweep.append({k: r[k] for k in ("latency_ms", "in_flight", "bound", "achieved")})
            print(f"  sweep: {latency:>3} ms x {n:>3} in flight: {r['achieved']:7.1f}/s "
                  f"(bound {r['bound']:.0f}/s)", flush=True)
    rss = []
    sizes = (8, 32, args.memory_gib) if quick else SIZES_GIB
    for size in sizes:
        for mode in ("download", "list"):
            if mode == "list" and size > 1024 and not args.big:
                continue  # a whole 4 or 16 TiB listing takes minutes: --big
            r = bench.memory(size, args.memory_blocks, mode == "list")
            rss.append({"size_gib": size, "mode": mode, "blocks": r["blocks"],
                        "idle_rss_mib": r["idle_rss_mib"], "peak_rss_mib": r["peak_rss_mib"]})
            print(f"  rss: {size} GiB {mode}: peak {r['peak_rss_mib']:.0f} MiB", flush=True)
    cpu = [{"case": name, "floor": floor, "fspd": fspd,
            **{k: v for k, v in others.items() if "MiB/s" not in k}}
           for name, floor, fspd, others in bench.rows]
    return {"date": time.strftime("%Y-%m-%d", time.gmtime()), "cpu": cpu,
            "throughput": sweep, "rss": rss}


async def run(bench: Any, args: argparse.Namespace, machine: str) -> None:
    """The ``--plot DIR`` hook of tests/bench/__main__.py."""
    need_matplotlib()  # before minutes of measuring
    out = Path(args.plot)
    out.mkdir(parents=True, exist_ok=True)
    print("\nCharts: latency sweep and RSS by volume size", flush=True)
    figures = await measure(bench, args)
    figures["machine"] = machine
    (out / "bench.json").write_text(json.dumps(figures, indent=1) + "\n")
    for path in draw(figures, out):
        print(f"  wrote {path}")


# -- drawing -----------------------------------------------------------------------------

def draw(figures: dict[str, Any], out: Path) -> list[Path]:
    plt = need_matplotlib()
    written = []
    for name, chart in (("throughput", _throughput), ("cpu", _cpu), ("rss", _rss)):
        fig, ax = plt.subplots(figsize=(7.2, 4.2))
        chart(ax, figures)
        ax.grid(True, alpha=0.3)
        where = "; ".join(str(figures.get("machine", "")).split("; ")[:2])
        fig.text(0.99, 0.01, f"{figures.get('date', '')}, {where}", ha="right", va="bottom",
                 fontsize=6, color="#777")
        fig.tight_layout()
        for fmt in FORMATS:
            path = out / f"{name}.{fmt}"
            fig.savefig(path, format=fmt, metadata={"Date": None} if fmt == "svg"
                        else {"Software": None})
            written.append(path)
        plt.close(fig)
    return written


def _throughput(ax: Any, figures: dict[str, Any]) -> None:
    for latency in LATENCIES_MS:
        points = sorted((p for p in figures["throughput"] if p["latency_ms"] == latency),
                        key=lambda p: p["in_flight"])
        if not points:
            continue
        xs = [p["in_flight"] for p in points]
        colour = COLOURS[latency]
        ax.plot(xs, [p["bound"] for p in points], "--", color=colour, alpha=0.6,
                gid=f"bound-{latency}ms", label=f"bound at {latency} ms")
        ax.plot(xs, [p["achieved"] for p in points], "o-", color=colour,
                gid=f"achieved-{latency}ms", label=f"fspd at {latency} ms")
    ax.set_xscale("log")
    ticks = sorted({p["in_flight"] for p in figures["throughput"]})
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("GetSnapshotBlock requests in flight")
    ax.set_ylabel("blocks/s (download)")
    ax.set_title("Throughput against the latency bound min(in-flight / latency, 1000/s)")
    ax.legend(fontsize=8, ncol=2)


def _cpu(ax: Any, figures: dict[str, Any]) -> None:
    rows = figures["cpu"]
    present = [c for c in CONTENDERS if any(c in r for r in rows)]
    width = 0.8 / max(1, len(present))
    for j, contender in enumerate(present):
        xs = [i + (j - (len(present) - 1) / 2) * width for i, r in enumerate(rows)
              if contender in r]
        ys = [r[contender] for r in rows if contender in r]
        bars = ax.bar(xs, ys, width, label=contender, gid=f"cpu-{contender.split()[0]}")
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks(range(len(rows)), [r["case"] for r in rows])
    ax.set_ylabel("client CPU ms per 512 KiB block")
    ax.set_title("CPU per block: fspd, the physical floor, previous approaches")
    ax.legend(fontsize=8)


def _rss(ax: Any, figures: dict[str, Any]) -> None:
    for mode, marker in (("list", "s-"), ("download", "o-")):
        points = sorted((p for p in figures["rss"] if p["mode"] == mode),
                        key=lambda p: p["size_gib"])
        if points:
            ax.plot([p["size_gib"] / 1024 for p in points], [p["peak_rss_mib"] for p in points],
                    marker, gid=f"rss-{mode}",
                    label=f"peak, {'whole listing' if mode == 'list' else 'download'}")
    idle = [p["idle_rss_mib"] for p in figures["rss"]]
    if idle:
        ax.axhline(max(idle), color="#777", linestyle=":", label="idle process")
    ax.axhline(RSS_TARGET_MIB, color="#c0392b", linestyle="--", label="target 256 MiB")
    ax.set_xscale("log", base=2)
    sizes = sorted({p["size_gib"] for p in figures["rss"]})
    ax.set_xticks([s / 1024 for s in sizes],
                  [f"{s // 1024} TiB" if s >= 1024 else f"{s} GiB" for s in sizes])
    ax.minorticks_off()
    ax.set_ylim(0, RSS_TARGET_MIB * 1.2)
    ax.set_xlabel("volume size")
    ax.set_ylabel("peak RSS, MiB")
    ax.set_title("Peak RSS of one fspd process by volume size")
    ax.legend(fontsize=8)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.plots",
                                     description="draw the charts again from bench.json")
    parser.add_argument("figures", help="bench.json written by python -m tests.bench --plot")
    parser.add_argument("out", help="directory for the charts")
    args = parser.parse_args(argv)
    try:
        figures = json.loads(Path(args.figures).read_text())
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        for path in draw(figures, out):
            print(path)
    except (OSError, ValueError, KeyError, PlotError) as exc:
        print(f"python -m tests.bench.plots: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
