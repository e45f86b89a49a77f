"""``fspd download`` keeps its connections alive: over HTTPS a download of many blocks makes
about as many TLS handshakes as it has requests in flight, not one per few blocks. Counted at
the server (the emulator's ``stats()["connections"]``: connections accepted, over HTTPS after
the handshake)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from fspd.emulator.control import EmulatorControl, EmulatorProcess
from tests.cli.conftest import _runner

pytestmark = pytest.mark.timeout(300)

CONCURRENCY = 4
BLOCKS = 96
# Besides the block path's pool: the botocore clients of the listing and the EC2 calls.
SLACK = 4


@pytest.fixture(scope="module", params=["https", "http"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[EmulatorProcess]:
    proc = EmulatorProcess(data_dir=tmp_path_factory.mktemp("keepalive-emulator"),
                           tls=request.param == "https")
    proc.start()
    yield proc
    proc.stop()


def test_download_opens_about_as_many_connections_as_requests_in_flight(
        server: EmulatorProcess, tmp_path: Path) -> None:
    assert server.url is not None
    tls = server.url.startswith("https://")
    emu = EmulatorControl(server.url, ca_bundle=server.ca_bundle if tls else None)
    emu.reset()
    snap = emu.synthetic(volume_size=1, allocation="sparse", density=BLOCKS / 2048, seed=21)
    config = tmp_path / "fspd.toml"
    config.write_text(f"[transfer]\nfetch_concurrency = {CONCURRENCY}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_ENDPOINT_URL")}
    env |= {"AWS_ENDPOINT_URL_EBS": server.url, "AWS_ENDPOINT_URL_EC2": server.url,
            "FSPD_CONFIG": str(config)}
    if tls:
        env["AWS_CA_BUNDLE"] = str(server.ca_bundle)
    emu.reset_stats()

    result = _runner(env, tmp_path)(f"fspd download {snap} out.img")

    assert result.returncode == 0, result.stderr
    with open(tmp_path / "out.img", "rb") as f:
        assert f.read(64 << 20) == emu.image(snap, length=64 << 20)
    stats = emu.stats()
    assert stats["requests"]["GetSnapshotBlock"] > 4 * (CONCURRENCY + SLACK)  # ~BLOCKS
    # One connection per request would be ~BLOCKS; kept alive, the pool's size at most.
    assert 1 <= stats["connections"] <= CONCURRENCY + SLACK, stats
