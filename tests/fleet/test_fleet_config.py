"""The [fleet] section: optional, every key documented in config/fspd.toml, bad values named."""

from __future__ import annotations

from pathlib import Path

import pytest

from fspd import config
from fspd.errors import BadInput

ROOT = Path(__file__).resolve().parents[2]


def test_without_a_fleet_section_the_host_is_not_in_a_fleet() -> None:
    assert config.load(ROOT / "config" / "fspd.toml").fleet is None


def test_the_example_config_documents_every_fleet_key() -> None:
    text = (ROOT / "config" / "fspd.toml").read_text()
    assert "\n# [fleet]\n" in text
    for key in config.FleetSettings.model_fields:
        assert f"\n# {key} = " in text, f"fleet.{key} is not documented"


def test_the_documented_fleet_section_loads_when_uncommented(tmp_path: Path) -> None:
    text = (ROOT / "config" / "fspd.toml").read_text().partition("\n# [fleet]\n")[2]
    lines = [line.removeprefix("# ") for line in text.splitlines() if " = " in line]
    path = tmp_path / "fspd.toml"
    path.write_text("[fleet]\n" + "\n".join(lines) + "\n")
    fleet = config.load(path).fleet
    assert fleet is not None
    assert (fleet.queue, fleet.dlq_name, fleet.table) == ("fspd-jobs", "fspd-jobs-dlq",
                                                          "fspd-jobs")
    assert (fleet.checkpoint_bucket, fleet.checkpoint_prefix) == ("my-bucket", "fspd-fleet/")


@pytest.mark.parametrize(("body", "field"), [
    ('queue = "q"\ntable = "tab"', "fleet.bucket"),
    ('queue = "q"\ntable = "tab"\nbucket = "my-bucket"', "fleet.bucket"),
    ('queue = "q w"\ntable = "tab"\nbucket = "s3://b-b"', "fleet.queue"),
    ('queue = "q"\ntable = "tab"\nbucket = "s3://bbb"\nreceive_wait_s = 21', "fleet.receive"),
    ('queue = "q"\ntable = "tab"\nbucket = "s3://bbb"\nlease_s = 30\nheartbeat_s = 20',
     "heartbeat_s must be at most half of lease_s"),
])
def test_a_bad_fleet_setting_is_named(tmp_path: Path, body: str, field: str) -> None:
    path = tmp_path / "fspd.toml"
    path.write_text(f"[fleet]\n{body}\n")
    with pytest.raises(BadInput, match=field):
        config.load(path)
