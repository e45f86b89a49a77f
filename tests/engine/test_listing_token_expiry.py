"""A listing whose page token expired (INVALID_PAGE_TOKEN, recognised by its error code and
reason) carries on from the next block not yet seen: every block is listed once."""

from __future__ import annotations

from fspd.emulator.control import EmulatorControl
from tests.engine._support import fast_settings, run


async def test_expired_page_tokens_restart_the_listing_where_it_was(
        emulator: EmulatorControl) -> None:
    snap = emulator.synthetic(region="us-east-1", volume_size=1, allocation="sparse",
                              density=0.3, seed=41)
    spec = {"source": {"type": "ebs", "snapshot_id": snap, "endpoint_url": emulator.url}}
    settings = fast_settings(list_page_size=100)
    emulator.config(list_rate=10_000)  # no throttling: every request counted is a page asked for
    emulator.reset_stats()
    expected = (await run(spec, settings))["blocks"]
    pages = emulator.stats()["requests"]["ListSnapshotBlocks"]
    assert expected > 300 and pages > 3  # several pages of 100

    emulator.config(page_token_ttl=0)  # every NextToken has expired by the time it is used
    emulator.reset_stats()
    result = await run(spec, settings)
    assert result["blocks"] == expected
    assert result["unlisted_blocks"] == 2048 - expected
    # Each page after the first: its token refused, then asked for by its starting index.
    assert emulator.stats()["requests"]["ListSnapshotBlocks"] == 2 * pages - 1
