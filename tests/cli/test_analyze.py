"""``fspd analyze`` as typed (issue 16 part 3): per snapshot of a lineage the allocated size,
the change against the previous snapshot, the blocks unique to it and a monthly cost, as a
table, JSON, CSV and an SVG chart; bad input exits 2 naming the field; the listings are
streamed, so a 16 TiB lineage stays within the usual 256 MiB."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import boto3
import pytest

from fspd.emulator.control import EmulatorControl
from tests.cli._peak_memory import peak_env, peak_mib
from tests.cli._readme import readme_command, typed
from tests.cli.conftest import Runner
from tests.waiting import wait_until

BLOCK = 512 * 1024
MIB_PER_BLOCK = 0.5


def _snapshot(ebs: object, writes: dict[int, int], parent: str | None = None) -> str:
    """A completed 1 GiB snapshot holding ``writes`` ({index: fill byte}) over ``parent``."""
    params = {"VolumeSize": 1, **({"ParentSnapshotId": parent} if parent else {})}
    sid = ebs.start_snapshot(**params)["SnapshotId"]  # type: ignore[attr-defined]
    for index, fill in writes.items():
        data = bytes([fill]) * BLOCK
        ebs.put_snapshot_block(  # type: ignore[attr-defined]
            SnapshotId=sid, BlockIndex=index, BlockData=data, DataLength=BLOCK,
            Checksum=base64.b64encode(hashlib.sha256(data).digest()).decode(),
            ChecksumAlgorithm="SHA256")
    ebs.complete_snapshot(SnapshotId=sid,  # type: ignore[attr-defined]
                          ChangedBlocksCount=len(writes))
    return sid


@pytest.fixture
def lineage(emulator: EmulatorControl) -> list[str]:
    """Three snapshots of one volume with known blocks:
    S1 writes 0..9; S2 rewrites 5, 6, 7 and adds 20; S3 rewrites 6 and adds 30.
    Allocated 10, 11, 12. Changed against the previous: -, 4, 2.
    Unique (freed by deleting it): S1 {5, 6, 7} (S2 replaced them), S2 {6} (S3 replaced it),
    S3 {6, 30} (the newest: everything it wrote)."""
    ebs = boto3.client("ebs", endpoint_url=emulator.url, region_name="us-east-1")
    s1 = _snapshot(ebs, {i: 1 for i in range(10)})
    s2 = _snapshot(ebs, {5: 2, 6: 2, 7: 2, 20: 2}, parent=s1)
    s3 = _snapshot(ebs, {6: 3, 30: 3}, parent=s2)
    return [s1, s2, s3]


EXPECTED = {  # allocated, changed, unique (blocks) per snapshot, oldest first
    "allocated_blocks": [10, 11, 12],
    "changed_blocks": [10, 4, 2],
    "unique_blocks": [3, 1, 2],
}


def test_analyze_json_gives_allocated_changed_unique_and_cost_of_a_known_lineage(
        fspd: Runner, lineage: list[str]) -> None:
    s1, s2, s3 = lineage
    result = fspd(f"fspd analyze {s3} {s1} {s2} --json --price 0.1")  # any order given
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    rows = report["snapshots"]
    assert [r["snapshot_id"] for r in rows] == [s1, s2, s3]  # time order
    for key, values in EXPECTED.items():
        assert [r[key] for r in rows] == values, key
    assert [r["unique_bytes"] for r in rows] == [3 * BLOCK, BLOCK, 2 * BLOCK]
    # Cost: the data each snapshot stored (10, 4, 2 blocks) at 0.1 USD per GiB-month.
    assert [r["monthly_cost_usd"] for r in rows] == [
        round(n * BLOCK / (1 << 30) * 0.1, 4) for n in (10, 4, 2)]
    assert report["total"]["new_blocks"] == 16 and report["total"]["unique_blocks"] == 6
    assert report["price_per_gib_month_usd"] == 0.1 and report["price_source"] == "--price"


def test_analyze_volume_takes_every_snapshot_in_time_order_through_paginated_describe(
        fspd: Runner, lineage: list[str], emulator: EmulatorControl) -> None:
    """The emulator gives every snapshot the volume id AWS gives snapshots not taken from
    a volume (vol-ffffffff); DescribeSnapshots' pages of at most 1000 are followed."""
    emulator.reset_stats()
    result = fspd("fspd analyze --volume vol-ffffffff --csv")
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [r["snapshot_id"] for r in rows] == lineage
    for key, values in EXPECTED.items():
        assert [int(r[key]) for r in rows] == values, key
    # Default price from [analyze] in the config: 0.05 USD per GiB-month.
    assert float(rows[0]["monthly_cost_usd"]) == round(10 * BLOCK / (1 << 30) * 0.05, 4)


def test_analyze_table_and_plot_show_each_snapshot(fspd: Runner, lineage: list[str],
                                                   tmp_path: Path) -> None:
    s1, s2, s3 = lineage
    plot = tmp_path / "lineage.svg"
    result = fspd(f"fspd analyze {s1} {s2} {s3} --plot {plot}")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    row = next(line for line in lines if line.startswith(s2))
    assert "5.5 MiB" in row and "2.0 MiB" in row and "512.0 KiB" in row  # alloc, changed, unique
    assert lines[-2].startswith("total") and "8.0 MiB stored" in lines[-2]
    svg = ET.parse(plot).getroot()
    ns = {"s": "http://www.w3.org/2000/svg"}
    points = svg.find("s:polyline[@class='size']", ns)
    assert points is not None and len(points.get("points", "").split()) == 3
    titles = [t.text or "" for t in svg.iterfind(".//s:circle/s:title", ns)]
    assert [t.split()[0] for t in titles] == [s1, s2, s3]
    assert titles[1].endswith("0.005 GiB allocated")  # 11 blocks
    assert len(svg.findall("s:rect[@class='rate']", ns)) == 2  # a rate from the second on


def test_readme_analyze_line_reports_the_volume_and_draws_its_chart(
        fspd: Runner, lineage: list[str], tmp_path: Path) -> None:
    line = typed(readme_command("analyze"), {"vol-0123456789abcdef0": "vol-ffffffff"})
    result = fspd(line)
    assert result.returncode == 0, result.stderr
    assert [line.split()[0] for line in result.stdout.splitlines()[1:4]] == lineage
    assert "cost at 0.05 USD per GiB-month" in result.stdout
    chart = ET.parse(tmp_path / "sizes.svg").getroot()
    assert len(chart.findall("{http://www.w3.org/2000/svg}circle")) == 3


def test_analyze_dry_run_names_the_lineage_in_time_order_and_lists_nothing(
        fspd: Runner, lineage: list[str], emulator: EmulatorControl) -> None:
    s1, s2, s3 = lineage
    emulator.reset_stats()
    result = fspd(f"fspd analyze {s2} {s3} {s1} --dry-run --json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["dry_run"] is True
    assert [r["snapshot_id"] for r in report["snapshots"]] == [s1, s2, s3]
    calls = emulator.stats()["requests"]
    assert not calls.get("ListSnapshotBlocks") and not calls.get("ListChangedBlocks"), calls


@pytest.mark.parametrize(("command", "field"), [
    ("fspd analyze snap-0123456789abcdef0", "SNAPSHOT"),
    ("fspd analyze {s1} {s1}", "SNAPSHOT"),
    ("fspd analyze {s1} {other}", "SNAPSHOT"),
    ("fspd analyze", "SNAPSHOT"),
    ("fspd analyze {s1} --volume vol-ffffffff", "--volume"),
    ("fspd analyze --volume vol-0123456789abcdef0", "--volume"),
    ("fspd analyze --volume disk1", "--volume"),
    ("fspd analyze {s1} --price -1", "--price"),
    ("fspd analyze {s1} --plot out.png", "--plot"),
    ("fspd analyze {s1} --plot /nonexistent/dir/out.svg", "--plot"),
])
def test_analyze_bad_input_exits_2_naming_the_field(fspd: Runner, lineage: list[str],
                                                     emulator: EmulatorControl, command: str,
                                                     field: str) -> None:
    other = emulator.synthetic(volume_size=1, allocation="sparse", density=0.01, seed=5)
    result = fspd(command.format(s1=lineage[0], other=other) + " --json")
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert json.loads(result.stdout)["field"] == field
    assert len(result.stderr.strip().splitlines()) == 1 and field in result.stderr


LIMIT_MIB = 256
# What listing more blocks may add to the peak: the pages in flight (one plus one fetched
# ahead per snapshot) and allocator slack. Holding the 16 TiB lineage's ~470,000 entries
# before merging them added 43 MiB (92 -> 135 MiB); streamed, the peak did not move.
GROWTH_MIB = 24


def _peak_mib(fspd: Runner, tmp_path: Path, snaps: list[str], tag: str) -> tuple[float, dict]:
    env, out = peak_env(tmp_path, tag)
    result = fspd(["fspd", "analyze", *snaps, "--json"], timeout=900, extra_env=env)
    assert result.returncode == 0, result.stderr
    return peak_mib(out), json.loads(result.stdout)


def _synthetic_lineage(emulator: EmulatorControl, size_gib: int, density: float,
                       seed: int) -> list[str]:
    """A full-size first snapshot and two children, each rewriting a fifth as many blocks."""
    s1 = emulator.synthetic(volume_size=size_gib, allocation="sparse", density=density,
                            seed=seed)
    s2 = emulator.synthetic(volume_size=size_gib, allocation="sparse", density=density / 5,
                            seed=seed + 1, parent_snapshot_id=s1)
    s3 = emulator.synthetic(volume_size=size_gib, allocation="sparse", density=density / 5,
                            seed=seed + 2, parent_snapshot_id=s2)
    return [s1, s2, s3]


@pytest.mark.timeout(600)  # two listings of ~470,000 entries: a minute or more on 2 cores
def test_analyze_streams_a_16_tib_lineage_within_256_mib(
        fspd: Runner, emulator: EmulatorControl, tmp_path: Path) -> None:
    tiny = _synthetic_lineage(emulator, 1, 0.01, seed=40)
    big = _synthetic_lineage(emulator, 16384, 0.01, seed=50)
    base, _ = _peak_mib(fspd, tmp_path, tiny, "tiny")
    peak, report = _peak_mib(fspd, tmp_path, big, "big")
    rows = report["snapshots"]
    assert [r["volume_size_gib"] for r in rows] == [16384] * 3
    listed = sum(r["changed_blocks"] for r in rows)
    assert listed > 400_000, listed  # ~335,000 + 2 x ~67,000 entries were streamed
    assert rows[0]["allocated_blocks"] == rows[0]["new_blocks"] == rows[0]["changed_blocks"]
    assert rows[2]["unique_blocks"] == rows[2]["new_blocks"]  # the newest: all its own
    print(f"analyze peak RSS: 1 GiB {base:.0f} MiB, 16 TiB {peak:.0f} MiB, {listed} entries")
    assert peak <= LIMIT_MIB, f"peak RSS {peak:.0f} MiB"
    assert peak - base <= GROWTH_MIB, (f"peak RSS {peak:.0f} MiB for 16 TiB vs {base:.0f} MiB "
                                       "for 1 GiB: the listings are not streamed")



def test_analyze_volume_follows_every_describe_snapshots_page(
        fspd: Runner, emulator: EmulatorControl, tmp_path: Path) -> None:
    """Twelve snapshots, each a child of the one before, in pages of five
    (``[analyze] describe_page_size``): all three pages are read, and all twelve listings
    merged in one pass."""
    volume = "vol-0a1b2c3d4e5f60718"  # a volume's snapshots, beside one of no volume
    emulator.synthetic(volume_size=1, allocation="sparse", density=0.05, seed=59)

    def after_the_last(**spec: object) -> str:
        # StartTime has millisecond resolution: two snapshots made within one millisecond
        # have no order, so each is made once the clock has moved past the one before.
        last = time.time()
        wait_until(lambda: time.time() >= last + 0.002, None, "the clock to move", timeout=5)
        return emulator.synthetic(volume_size=1, allocation="sparse", volume_id=volume, **spec)

    snaps = [after_the_last(density=0.05, seed=60)]
    for k in range(11):
        snaps.append(after_the_last(density=0.01, seed=61 + k, parent_snapshot_id=snaps[-1]))
    config = tmp_path / "pages.toml"
    config.write_text("[analyze]\ndescribe_page_size = 5\n")
    emulator.reset_stats()
    result = fspd(f"fspd analyze --volume {volume} --json --config {config}")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)["snapshots"]
    assert [r["snapshot_id"] for r in rows] == snaps
    assert emulator.stats()["requests"]["DescribeSnapshots"] == 3
    assert rows[-1]["unique_blocks"] == rows[-1]["new_blocks"] > 0
