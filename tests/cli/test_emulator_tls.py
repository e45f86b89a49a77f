"""fspd over HTTPS, as a user runs it: ``fspd emulator --tls`` serves with a certificate made
at start; fspd trusts it through ``AWS_CA_BUNDLE`` (or the profile's ``ca_bundle``), as botocore
does, on every path (its own fast block path included), and refuses it, at once and saying
how to fix it, without."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from fspd.emulator.control import EmulatorControl, EmulatorProcess
from tests.cli.conftest import Runner, _runner

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def tls_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorProcess]:
    proc = EmulatorProcess(data_dir=tmp_path_factory.mktemp("tls-emulator"), tls=True)
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
def tls_env(tls_emulator: EmulatorProcess) -> dict[str, str]:
    """A user whose AWS is the HTTPS emulator, with no CA bundle set anywhere."""
    assert tls_emulator.url is not None and tls_emulator.url.startswith("https://")
    EmulatorControl(tls_emulator.url, ca_bundle=tls_emulator.ca_bundle).reset()
    env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
    env["AWS_ENDPOINT_URL_EBS"] = env["AWS_ENDPOINT_URL_EC2"] = tls_emulator.url
    env.pop("AWS_ENDPOINT_URL", None)
    return env


@pytest.fixture
def emu(tls_emulator: EmulatorProcess) -> EmulatorControl:
    assert tls_emulator.url is not None
    return EmulatorControl(tls_emulator.url, ca_bundle=tls_emulator.ca_bundle)


def _trusting(tls_env: dict[str, str], tls_emulator: EmulatorProcess, tmp_path: Path) -> Runner:
    return _runner({**tls_env, "AWS_CA_BUNDLE": str(tls_emulator.ca_bundle)}, tmp_path)


def test_emulator_prints_where_it_wrote_the_ca_certificate(tls_emulator: EmulatorProcess
                                                          ) -> None:
    lines = [json.loads(line) for line in tls_emulator.log_path.read_text().splitlines()
             if line.startswith("{")]
    listening = next(e for e in lines if e.get("event") == "listening")
    assert listening["url"] == tls_emulator.url
    assert listening["ca_bundle"] == str(tls_emulator.ca_bundle)
    assert Path(listening["ca_bundle"]).read_text().startswith("-----BEGIN CERTIFICATE-----")


def test_upload_then_download_over_tls_with_aws_ca_bundle_round_trips_the_bytes(
        tls_env: dict[str, str], tls_emulator: EmulatorProcess, emu: EmulatorControl,
        tmp_path: Path) -> None:
    fspd = _trusting(tls_env, tls_emulator, tmp_path)
    data = os.urandom(5 * 524288 + 1000)
    (tmp_path / "disk.img").write_bytes(data)
    up = fspd("fspd upload disk.img --json")
    assert up.returncode == 0, up.stderr
    snap = json.loads(up.stdout)["destinations"][0]["snapshot_id"]
    assert emu.image(snap, length=len(data)) == data  # the upload's effect, seen by AWS
    assert emu.stats()["requests"]["PutSnapshotBlock"] == 6

    down = fspd(f"fspd download {snap} back.img --size-of disk.img")
    assert down.returncode == 0, down.stderr
    assert (tmp_path / "back.img").read_bytes() == data
    assert emu.stats()["requests"]["GetSnapshotBlock"] == 6


def test_download_over_tls_trusts_the_profiles_ca_bundle(
        tls_env: dict[str, str], tls_emulator: EmulatorProcess, emu: EmulatorControl,
        tmp_path: Path) -> None:
    config = tmp_path / "aws-config"
    config.write_text(f"[default]\nca_bundle = {tls_emulator.ca_bundle}\n")
    snap = emu.synthetic(volume_size=1, allocation="sparse", density=0.002, seed=3)
    fspd = _runner({**tls_env, "AWS_CONFIG_FILE": str(config)}, tmp_path)
    down = fspd(f"fspd download {snap} out.img")
    assert down.returncode == 0, down.stderr
    with open(tmp_path / "out.img", "rb") as f:
        assert f.read(64 << 20) == emu.image(snap, length=64 << 20)
    assert emu.stats()["requests"]["GetSnapshotBlock"] > 0


@pytest.mark.parametrize("verb", ["download", "upload"])
def test_without_the_ca_bundle_fspd_fails_at_once_naming_the_certificate(
        verb: str, tls_env: dict[str, str], emu: EmulatorControl, tmp_path: Path) -> None:
    fspd = _runner(tls_env, tmp_path)
    (tmp_path / "disk.img").write_bytes(os.urandom(524288))
    snap = emu.synthetic(volume_size=1, allocation="sparse", density=0.001, seed=4)
    command = f"fspd download {snap} out.img" if verb == "download" else "fspd upload disk.img"
    result = fspd(command)
    assert result.returncode == 4, result.stderr
    assert "TLS certificate" in result.stderr and "AWS_CA_BUNDLE" in result.stderr
    assert "attempt 2" not in result.stderr  # not retried: a retry cannot fix it
    assert emu.stats()["requests"] == {}  # nothing got through the handshake


def test_a_ca_bundle_that_is_not_a_file_is_bad_input_named(
        tls_env: dict[str, str], emu: EmulatorControl, tmp_path: Path) -> None:
    snap = emu.synthetic(volume_size=1, allocation="sparse", density=0.001, seed=6)
    fspd = _runner({**tls_env, "AWS_CA_BUNDLE": str(tmp_path / "missing.pem")}, tmp_path)
    result = fspd(f"fspd download {snap} out.img")
    assert result.returncode == 2, result.stderr
    assert "AWS_CA_BUNDLE" in result.stderr and "missing.pem" in result.stderr
    assert "attempt" not in result.stderr
    assert emu.stats()["requests"] == {}


def test_cert_out_without_tls_is_bad_input(tmp_path: Path) -> None:
    fspd = _runner(dict(os.environ), tmp_path)
    result = fspd(f"fspd emulator --port 0 --cert-out {tmp_path / 'ca.pem'}")
    assert result.returncode == 2
    assert "--cert-out" in result.stderr and "--tls" in result.stderr
