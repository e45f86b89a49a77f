"""Job files: every malformed input becomes a BadInput naming a field — never a crash —
whatever the bytes (property-based, hypothesis)."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fspd import jobs
from fspd.errors import BadInput

GOOD = {"source": {"type": "ebs", "snapshot_id": "snap-0123456789abcdef0"},
        "destinations": [{"type": "file", "path": "/srv/out.img"}]}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20)

FIELDS = ["source", "destinations", "name", "priority", "dry_run", "version", "verb",
          "on_destination_failure", "type", "snapshot_id", "path", "region", "mode",
          "tags", "timeout_minutes", "snapshot_ids", "base_snapshot_id", "client_token"]


def _mutate(data: Any, key: str, value: Any) -> dict[str, Any]:
    out = json.loads(json.dumps(GOOD))
    target = out
    if key in ("type", "snapshot_id", "region", "base_snapshot_id", "snapshot_ids"):
        target = out["source"]
    elif key in ("path", "mode", "tags", "timeout_minutes", "client_token"):
        target = out["destinations"][0]
    target[key] = value
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_never_crash_the_parser(raw: bytes) -> None:
    try:
        jobs.parse(raw, "job")
    except BadInput as exc:
        assert exc.field
    except Exception as exc:  # pragma: no cover - the property is that this never happens
        pytest.fail(f"{type(exc).__name__}: {exc}")


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(FIELDS), json_values)
def test_any_wrong_value_in_any_field_is_named(key: str, value: Any) -> None:
    data = _mutate(GOOD, key, value)
    for fmt in ("json",):
        raw = json.dumps(data).encode()
        try:
            spec = jobs.parse(raw, f"job.{fmt}")
        except BadInput as exc:
            assert exc.field, exc
            assert "Traceback" not in str(exc)
        else:
            assert isinstance(spec, jobs.JobSpec)


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_whole_documents_of_any_shape_are_rejected_cleanly(value: Any) -> None:
    try:
        jobs.validate(value)
    except BadInput as exc:
        assert exc.field


def test_enormous_and_deeply_nested_files_are_refused_by_name() -> None:
    with pytest.raises(BadInput, match="limit"):
        jobs.parse(b"x" * (jobs.MAX_JOB_FILE_BYTES + 1), "job.toml")
    with pytest.raises(BadInput):
        jobs.parse(b"[" * 100_000, "job.json")


def test_paths_with_dotdot_resolve_before_the_allow_list_applies(tmp_path: Any) -> None:
    from fspd.config import PathSettings
    from fspd.endpoints.paths import check_write

    allowed = PathSettings(allow_write=(str(tmp_path / "images"),))
    (tmp_path / "images").mkdir()
    with pytest.raises(BadInput, match="outside the writable paths"):
        check_write(str(tmp_path / "images" / ".." / "escape.img"), allowed, "path")
    (tmp_path / "images" / "link.img").symlink_to(tmp_path / "outside.img")
    with pytest.raises(BadInput, match="outside the writable paths"):
        check_write(str(tmp_path / "images" / "link.img"), allowed, "path")
    ok, device = check_write(str(tmp_path / "images" / "fine.img"), allowed, "path")
    assert ok.name == "fine.img" and not device


def test_devices_are_not_writable_unless_allowed() -> None:
    from fspd.config import PathSettings
    from fspd.endpoints.paths import check_write

    with pytest.raises(BadInput, match="not a block device"):
        check_write("/dev/null", PathSettings(), "path")  # a char device: never a target
    disk = next((d for d in ("/dev/vda", "/dev/sda", "/dev/nvme0n1", "/dev/xvda")
                 if os.path.exists(d)), None)
    if disk is None:
        pytest.skip("no block device on this machine")
    with pytest.raises(BadInput, match="allow_devices"):
        check_write(disk, PathSettings(), "path")
    # Even when allowed, the disk holding / is mounted: refused.
    with pytest.raises(BadInput, match="mounted"):
        check_write(disk, PathSettings(allow_devices=(disk,)), "path")
