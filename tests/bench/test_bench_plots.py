"""The benchmark's charts (issue 16 part 2). Drawing needs matplotlib, the ``[bench]`` extra,
which CI does not install (it would add ~40 MB of wheels to every run for one test): that
test is skipped without it. Refusing ``--plot`` without matplotlib is checked everywhere."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.conftest import ROOT

SVG = "{http://www.w3.org/2000/svg}"


def test_plot_without_matplotlib_is_refused_before_anything_is_measured(
        tmp_path: Path) -> None:
    shadow = tmp_path / "shadow" / "matplotlib"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('not installed (test)')\n")
    out = tmp_path / "charts"
    result = subprocess.run(
        [sys.executable, "-m", "tests.bench", "--quick", "--plot", str(out)], cwd=ROOT,
        capture_output=True, text=True, timeout=120, check=False,
        env={"PYTHONPATH": str(tmp_path / "shadow"), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 2, result.stderr
    assert "pip install -e '.[bench]'" in result.stderr
    assert "Traceback" not in result.stderr
    assert "machine:" not in result.stdout and not out.exists()


def _figures() -> dict[str, object]:
    """Figures in bench.json's shape (as ``python -m tests.bench --plot`` writes them)."""
    sweep = []
    for latency in (0, 20, 100):
        for n, achieved in zip((1, 5, 25, 100), (30.0, 140.0, 420.0, 905.0), strict=True):
            bound = 1000 if latency == 0 else min(n * 1000 / latency, 1000)
            sweep.append({"latency_ms": latency, "in_flight": n, "bound": bound,
                          "achieved": min(achieved, bound * 0.95)})
    return {
        "date": "2026-12-01", "machine": "2 cores, test CPU; Python 3",
        "cpu": [{"case": "download", "floor": 0.5, "fspd": 0.8, "aiobotocore path": 1.1,
                 "FSP-style boto3 threads": 2.0},
                {"case": "upload", "floor": 0.46, "fspd": 0.74, "aiobotocore path": 1.2},
                {"case": "movetos3", "floor": 1.2, "fspd": 1.5}],
        "throughput": sweep,
        "rss": [{"size_gib": s, "mode": m, "blocks": 4000, "idle_rss_mib": 60.0,
                 "peak_rss_mib": peak}
                for s, m, peak in ((1024, "list", 96.0), (1024, "download", 194.0),
                                   (4096, "download", 196.0), (16384, "list", 97.0),
                                   (16384, "download", 198.0))],
    }


def _vertices(root: ET.Element, gid: str) -> list[tuple[float, float]]:
    group = root.find(f".//{SVG}g[@id='{gid}']")
    assert group is not None, f"no {gid} in the chart"
    path = group.find(f"{SVG}path")
    assert path is not None
    return [(float(x), float(y)) for x, y in re.findall(r"[ML] ([-\d.]+) ([-\d.]+)",
                                                         path.get("d", ""))]


def test_charts_draw_every_figure_of_bench_json_as_png_and_svg(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="charts need the [bench] extra (matplotlib)")
    figures = _figures()
    (tmp_path / "bench.json").write_text(json.dumps(figures))
    out = tmp_path / "charts"
    result = subprocess.run([sys.executable, "-m", "tests.bench.plots",
                             str(tmp_path / "bench.json"), str(out)], cwd=ROOT,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    for name in ("throughput", "cpu", "rss"):
        assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        ET.parse(out / f"{name}.svg")

    chart = ET.parse(out / "throughput.svg").getroot()
    for latency in (0, 20, 100):
        points = [p for p in figures["throughput"]  # type: ignore[attr-defined]
                  if p["latency_ms"] == latency]
        drawn = _vertices(chart, f"achieved-{latency}ms")
        assert len(drawn) == len(points) == len(_vertices(chart, f"bound-{latency}ms"))
        # Higher throughput is drawn higher (smaller y), in the order of the figures.
        by_value = sorted(range(len(points)), key=lambda i: points[i]["achieved"])
        by_height = sorted(range(len(drawn)), key=lambda i: -drawn[i][1])
        assert by_value == by_height

    cpu = ET.parse(out / "cpu.svg").getroot()
    for contender, bars in (("floor", 3), ("fspd", 3), ("aiobotocore", 2), ("FSP-style", 1)):
        assert len(cpu.findall(f".//{SVG}g[@id='cpu-{contender}']")) == bars, contender

    rss = ET.parse(out / "rss.svg").getroot()
    assert len(_vertices(rss, "rss-download")) == 3 and len(_vertices(rss, "rss-list")) == 2
