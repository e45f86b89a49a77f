"""Progress accounting: an estimated total while listing, the exact one after, pauses, and
the units every view prints."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from fspd.blocks import BLOCK_SIZE
from fspd.daemon.view import parse_rate
from fspd.display import eta_text, human_bytes, human_duration, percent_text, progress_text
from fspd.endpoints.files import _data_block_count, _data_ranges
from fspd.progress import Progress
from tests.engine._support import download, fast_settings

B = BLOCK_SIZE


def _listing(volume_blocks: int, listed: int, position: int, done: int = 0) -> Progress:
    p = Progress()
    p.start()
    p.volume_blocks = volume_blocks
    p.blocks_listed = listed
    p.listed_to(position)
    for _ in range(done):
        p.block_done()
    return p


def test_nothing_listed_yet_means_no_total_no_percent_no_eta() -> None:
    p = _listing(1000, 0, 0)
    assert p.total() == (None, False)
    assert p.percent() is None and p.eta() is None
    fields = p.snapshot()
    assert fields["blocks_total"] is None and fields["blocks_total_estimate"] is None
    assert fields["total_estimated"] is False and fields["percent"] is None


def test_the_total_is_extrapolated_from_the_listed_share_of_the_block_index() -> None:
    # 100 blocks listed over the first quarter of a 1,000-block volume: about 400 in all.
    p = _listing(1000, 100, 250, done=40)
    assert p.total() == (400, True)
    assert p.percent() == pytest.approx(10.0)
    assert p.eta() is not None and p.eta() > 0
    fields = p.snapshot()
    assert fields["blocks_total"] is None  # stays "exact or null" for scripts
    assert fields["blocks_total_estimate"] == 400 and fields["total_estimated"] is True
    assert fields["percent"] == 10.0 and fields["eta_s"] is not None


def test_the_exact_total_replaces_the_estimate_when_listing_ends() -> None:
    p = _listing(1000, 100, 250, done=40)
    p.blocks_listed = p.blocks_total = 380
    p.listed_to(1000)
    assert p.total() == (380, False)
    fields = p.snapshot()
    assert fields["blocks_total"] == fields["blocks_total_estimate"] == 380
    assert fields["total_estimated"] is False


def test_an_estimate_never_claims_the_job_is_done() -> None:
    # Everything listed so far is done, and the density says nothing else is left.
    p = _listing(1000, 50, 1000, done=50)
    assert p.total() == (50, True)
    assert p.percent() == 99.0
    p.blocks_total = 50
    assert p.percent() == 100.0


def test_an_estimate_is_never_below_what_is_already_listed_or_done() -> None:
    p = _listing(1000, 10, 10, done=10)
    assert p.total() == (1000, True)  # dense so far: the whole volume
    p = _listing(100, 80, 200, done=80)  # a position past the volume's end is clamped
    assert p.total() == (80, True)


def test_a_source_that_knows_its_count_gives_an_exact_total_from_the_start() -> None:
    p = Progress()
    p.start()
    p.expect(200, data_blocks=20)
    assert p.total() == (200, False)
    assert p.snapshot()["total_estimated"] is False


def test_eta_of_a_sparse_file_counts_the_blocks_to_read_not_the_holes() -> None:
    """90 of 100 blocks done, but they were holes; 5 of the 10 data blocks are still to be
    read: about as long again as so far, not a ninth of it."""
    p = Progress()
    p.started = time.monotonic() - 10.0
    p.state = "running"
    p.expect(100, data_blocks=10)
    p.blocks_done = 90
    p.stage("fetch").done = 5
    eta = p.eta()
    assert eta is not None and eta == pytest.approx(10.0, rel=0.05)


def test_a_paused_job_has_rate_zero_no_eta_and_its_pause_is_not_running_time() -> None:
    p = _listing(1000, 100, 250, done=40)
    p.started = time.monotonic() - 20.0
    p.pause()
    p.paused_since = time.monotonic() - 10.0  # paused for the last 10 s of 20
    average, recent = p.rates()
    assert recent == 0.0
    assert average == pytest.approx(40 * B / 10.0, rel=0.05)  # over 10 s running, not 20
    assert p.eta() is None
    snap = p.snapshot()
    assert snap["state"] == "paused" and snap["paused"] is True and snap["rate_recent_bps"] == 0
    p.resume()
    assert not p.paused and p.eta() is not None
    assert p.active_elapsed == pytest.approx(10.0, abs=0.5)


def test_sparse_file_extents_count_each_data_block_once(tmp_path: Path) -> None:
    path = tmp_path / "sparse.img"
    with path.open("wb") as f:
        f.truncate(64 * B)
        for index in (0, 1, 10, 40):
            f.seek(index * B)
            f.write(os.urandom(B))
    fd = os.open(path, os.O_RDONLY)
    try:
        ranges = _data_ranges(fd, 64 * B)
    finally:
        os.close(fd)
    if ranges is None or not ranges:
        pytest.skip("this filesystem does not report holes")
    assert _data_block_count(ranges, 64 * B) == 4
    assert _data_block_count([(0, 3 * B // 2), (3 * B // 2, 2 * B)], 64 * B) == 2


def test_progress_words_mark_estimates_and_use_binary_units() -> None:
    rec = {"blocks_done": 2960, "blocks_total_estimate": 6900, "total_estimated": True,
           "percent": 42.9, "eta_s": 130.0, "rate_recent_bps": 25 * 2**20, "retries": 0}
    assert percent_text(rec) == "~43%" and eta_text(rec) == "~2m10s"
    text = progress_text(rec)
    assert "blocks 2960/~6900" in text and "25.0 MiB/s" in text and "of ~3.4 GiB" in text
    exact = {**rec, "total_estimated": False}
    assert percent_text(exact) == "43%" and eta_text(exact) == "2m10s"
    assert "blocks 2960/6900" in progress_text(exact)
    assert percent_text({"percent": None}) == "?" and eta_text({}) == "-"
    paused = {**exact, "paused": True, "eta_s": None}
    assert "0 B/s" in progress_text(paused) and "paused" in progress_text(paused)
    assert human_duration(42) == "42s" and human_duration(3725) == "1h02m"


@pytest.mark.parametrize("text", ["20M", "20MiB", "20MB", "20m/s", "20MiB/s"])
def test_rates_are_binary_however_written(text: str) -> None:
    assert parse_rate(text) == 20 * 2**20
    assert human_bytes(parse_rate(text)) == "20.0 MiB"


async def test_a_real_download_shows_an_estimate_close_to_the_exact_total_before_listing_ends(
        emulator, tmp_path: Path) -> None:
    """Against the emulator, with latency and few fetchers so listing lasts: the estimate is
    there long before the exact count, and is near it."""
    emulator.reset()
    snap = emulator.synthetic(volume_size=4, allocation="sparse", density=0.05, seed=5)
    emulator.faults(latency_ms=15, operations=["GetSnapshotBlock"])
    seen: list[tuple[int, int, int]] = []  # (blocks_done, estimate, listed) while estimated

    class Sampled(Progress):
        """The estimate as a display would show it, after every block done."""

        def block_done(self, nbytes: int = BLOCK_SIZE, *, skipped: bool = False) -> None:
            super().block_done(nbytes, skipped=skipped)
            total, estimated = self.total()
            if estimated and total is not None:
                seen.append((self.blocks_done, total, self.blocks_listed))

    progress = Sampled()
    try:
        await download(emulator.url, snap, tmp_path / "out.img",
                       settings=fast_settings(fetch_concurrency=4, queue_blocks=8),
                       progress=progress)
    finally:
        emulator.clear_faults()
    exact = progress.blocks_total
    assert exact is not None and exact > 200
    assert progress.total() == (exact, False)
    assert seen, "no estimate was shown while listing"
    assert seen[0][0] < exact // 4  # available in the first quarter of the job
    halfway = [estimate for done, estimate, _listed in seen if done >= exact // 2]
    assert halfway and all(abs(e - exact) <= 0.2 * exact for e in halfway)


def test_a_listing_job_shows_the_share_of_the_volume_listed_and_its_eta() -> None:
    p = _listing(1000, 30, 250)
    p.listing_only = True
    p.started = time.monotonic() - 10.0
    assert p.percent() == pytest.approx(25.0)
    eta = p.eta()
    assert eta is not None and eta == pytest.approx(30.0, rel=0.05)  # 10 s per quarter
    text = progress_text({**p.estimate(), "blocks_done": 0})
    assert "listed 30/~120" in text and "B/s" not in text
    p.blocks_total = 110  # the listing ended
    p.blocks_listed = 110
    assert p.percent() == 100.0
