"""The command lines of README.md, read from the README itself, so a test runs what a user
copies; placeholders (snap-A, disk.img, s3://bucket/…) are replaced by real values."""

from __future__ import annotations

import re
from typing import Any

import boto3

from tests.conftest import ROOT

SNAPSHOT_ID = re.compile(r"\bsnap-[0-9a-f]{8,17}\b")


def using_it_lines() -> list[str]:
    """Each ``fspd …`` line of the first shell block under "## Using it", comment removed."""
    section = (ROOT / "README.md").read_text(encoding="utf-8").split("## Using it", 1)[1]
    block = section.split("```sh", 1)[1].split("```", 1)[0]
    return [line.split("  #", 1)[0].strip() for line in block.splitlines()
            if line.strip().startswith("fspd ")]


def readme_command(verb: str, containing: str | None = None) -> str:
    """The README's line for ``fspd VERB …``: the only one, or the one ``containing`` an
    option (``download`` has a plain line and a ``--size-of`` line)."""
    found = [line for line in using_it_lines() if line.split()[1] == verb]
    if containing is not None:
        found = [line for line in found if containing in line.split()]
    elif len(found) > 1:  # the plain line: the one no other line of the verb extends
        found = [line for line in found
                 if not any(o != line and o.startswith(line) for o in found)] or found
        found = [min(found, key=len)]
    assert len(found) == 1, (verb, containing, found)
    return found[0]


def typed(line: str, subs: dict[str, str]) -> str:
    """``line`` with each placeholder replaced, longest first; a placeholder the README no
    longer shows fails the test (so it cannot silently run something else)."""
    for placeholder in sorted(subs, key=len, reverse=True):
        assert placeholder in line, f"{placeholder!r} is not in the README line {line!r}"
        line = line.replace(placeholder, subs[placeholder])
    return line


def snapshot_ids(text: str) -> list[str]:
    return SNAPSHOT_ID.findall(text)


def describe(emulator_url: str, snapshot_id: str, region: str = "us-east-1") -> dict[str, Any]:
    """DescribeSnapshots, as any AWS client sees the snapshot."""
    ec2 = boto3.client("ec2", region_name=region, endpoint_url=emulator_url)
    return dict(ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"][0])


def tags_of(described: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in described.get("Tags", [])}


DATA_REQUESTS = ("GetSnapshotBlock", "PutSnapshotBlock", "StartSnapshot", "CompleteSnapshot")


def data_requests(stats: dict[str, Any]) -> dict[str, int]:
    """Requests that read or write block data or make snapshots (a dry run sends none)."""
    return {k: v for k, v in stats["requests"].items() if k in DATA_REQUESTS and v}
