"""``fspd movetos3`` keeps its archive windows within the block budget (issue 12 item 12):
the windows waiting to be compressed and uploaded are counted against
``[transfer] max_buffered_blocks``, so a small budget bounds the job's peak memory, and the
archive it writes is still whole and exact. A window larger than the whole budget is refused
before anything moves."""

from __future__ import annotations

import json
from pathlib import Path

import boto3

from fspd.emulator.control import EmulatorControl
from tests.cli._peak_memory import peak_env, peak_mib
from tests.cli.conftest import Runner

BUDGET = 32  # blocks: 16 MiB
SEGMENT_BLOCKS = 16
# What a job costs besides its blocks and does not scale with the volume (the tiny job
# measures most of it: interpreter, clients, pools); this is the rest: request and response
# buffers of the blocks in flight, compression contexts, allocator slack.
ALLOWANCE_MIB = 72



def _peak_mib(fspd_s3: Runner, tmp_path: Path, args: str, tag: str) -> float:
    env, out = peak_env(tmp_path, tag)
    result = fspd_s3(f"fspd movetos3 --config {tmp_path / 'fspd.toml'} {args}",
                     extra_env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    return peak_mib(out)


def test_movetos3_with_a_small_budget_stays_within_it_and_writes_an_exact_archive(
        fspd_s3: Runner, emulator: EmulatorControl, moto: str, tmp_path: Path) -> None:
    (tmp_path / "fspd.toml").write_text(f"[transfer]\nmax_buffered_blocks = {BUDGET}\n")
    boto3.client("s3", endpoint_url=moto, region_name="us-east-1").create_bucket(Bucket="mem")
    tiny = emulator.synthetic(volume_size=1, allocation="sparse", density=0.004, seed=31)
    # ~512 incompressible blocks (256 MiB), 16 times the budget: a job holding them beyond
    # it would pass the limit by far (a full 1 GiB volume proved nothing more)
    big = emulator.synthetic(volume_size=1, allocation="sparse", density=0.25, seed=32)
    base = _peak_mib(fspd_s3, tmp_path, f"--segment-blocks {SEGMENT_BLOCKS} {tiny} "
                     "s3://mem/tiny", "tiny")
    peak = _peak_mib(fspd_s3, tmp_path, f"--segment-blocks {SEGMENT_BLOCKS} {big} s3://mem/big",
                     "big")
    limit = base + BUDGET * 0.5 + ALLOWANCE_MIB
    assert peak <= limit, (f"peak RSS {peak:.0f} MiB > {limit:.0f} MiB (a job over a few "
                           f"blocks: {base:.0f} MiB; budget {BUDGET * 0.5:.0f} MiB)")

    verified = fspd_s3("fspd verify s3://mem/big", timeout=300)
    assert verified.returncode == 0, verified.stderr
    target = tmp_path / "restored.img"
    restored = fspd_s3(f"fspd getfroms3 --config {tmp_path / 'fspd.toml'} s3://mem/big "
                       f"{target}", timeout=300)
    assert restored.returncode == 0, restored.stderr
    size = target.stat().st_size
    assert size == 1 << 30
    piece = 128 << 20
    with target.open("rb") as f:
        for offset in range(0, size, piece):
            assert f.read(piece) == emulator.image(big, offset=offset, length=piece), offset


def test_a_window_larger_than_the_whole_budget_is_refused_naming_both_settings(
        fspd_s3: Runner, emulator: EmulatorControl, moto: str, tmp_path: Path) -> None:
    (tmp_path / "fspd.toml").write_text(f"[transfer]\nmax_buffered_blocks = {BUDGET}\n")
    boto3.client("s3", endpoint_url=moto, region_name="us-east-1").create_bucket(Bucket="mem")
    snap = emulator.synthetic(volume_size=1, allocation="sparse", density=0.01, seed=33)
    result = fspd_s3(f"fspd movetos3 --config {tmp_path / 'fspd.toml'} --segment-blocks 64 "
                     f"{snap} s3://mem/wide")
    assert result.returncode == 2, result.stderr
    assert "segment_blocks" in result.stderr and "max_buffered_blocks" in result.stderr
    listed = boto3.client("s3", endpoint_url=moto, region_name="us-east-1").list_objects_v2(
        Bucket="mem")
    assert listed.get("KeyCount", 0) == 0, json.dumps(listed, default=str)  # nothing moved
