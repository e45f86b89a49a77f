"""movetos3's finishing window: a run killed after its manifest is in S3 but before it could
report (its journal already cleared, or never kept) leaves a complete archive. The rerun of the
same job recognises the archive as its own by the job named in the manifest header and reports
it completed, changing nothing; any other job (another name, or the same job edited) is still
refused. The jobs run as ``fspd run job.json --state-dir DIR`` in a child, as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from fspd.archive.manifest import ManifestError, parse_header
from fspd.checkpoint import spec_digest
from fspd.jobs import parse
from tests.cli.conftest import assert_clean, fspd_argv
from tests.conftest import TEST_AWS_CONFIG
from tests.s3._support import (
    assert_archive_is_exactly,
    assert_volume_file,
    make_image,
    run,
    s3_client,
)

PREFIX = "window"


class Job:
    def __init__(self, tmp_path: Path, moto: str, bucket: str, name: str = "archive-me",
                 **dest: Any) -> None:
        self.tmp, self.moto = tmp_path, moto
        self.path, self.state = tmp_path / f"{name}.json", tmp_path / "state"
        self.spec = {"name": name,
                     "source": {"type": "file", "path": str(tmp_path / "src.img")},
                     "destinations": [{"type": "s3", "bucket": bucket, "prefix": PREFIX,
                                       "endpoint_url": moto, "zstd_level": 1,
                                       "segment_blocks": 4, **dest}]}
        self.path.write_text(json.dumps(self.spec))
        self.config = tmp_path / "fspd.toml"
        self.config.write_text(TEST_AWS_CONFIG)  # the operator allows moto's endpoint_url

    def run(self) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "AWS_ENDPOINT_URL_S3": self.moto}
        result = subprocess.run(
            fspd_argv(["fspd", "--log-level", "warning", "run", str(self.path), "--state-dir",
                       str(self.state), "--config", str(self.config), "--json"]),
            capture_output=True, text=True, timeout=120, env=env, cwd=self.tmp,
            stdin=subprocess.DEVNULL)
        assert_clean(result)
        return result


def _manifest(moto: str, bucket: str) -> bytes:
    body: bytes = s3_client(moto).get_object(
        Bucket=bucket, Key=f"{PREFIX}/manifest.jsonl")["Body"].read()
    return body


def _segment_versions(moto: str, bucket: str) -> dict[str, str]:
    listed = s3_client(moto).list_objects_v2(Bucket=bucket, Prefix=f"{PREFIX}/segments/")
    return {o["Key"]: f"{o['ETag']}@{o['LastModified']}" for o in listed.get("Contents", [])}


async def test_a_rerun_after_the_manifest_was_written_reports_the_archive_completed(
        moto: str, bucket: str, tmp_path: Path) -> None:
    image = make_image(tmp_path / "src.img", "DZHD" * 6 + "T", seed=31)
    job = Job(tmp_path, moto, bucket)
    first = job.run()
    assert first.returncode == 0, first.stderr
    manifest, segments = _manifest(moto, bucket), _segment_versions(moto, bucket)
    # What a kill -9 just after the manifest's upload leaves: the archive complete in S3,
    # the journal cleared (or not yet claiming the manifest), and no result reported.
    assert not (job.state / "archive-me" / "checkpoint.json").exists()
    again = job.run()
    assert again.returncode == 0, again.stderr
    result = json.loads(again.stdout)
    record = result["destinations"][0]
    assert record["state"] == "completed"
    assert record["note"] == "completed by an earlier run of this job"
    assert result["bytes_done"] == 0  # nothing read or stored again
    assert _manifest(moto, bucket) == manifest
    assert _segment_versions(moto, bucket) == segments
    assert_archive_is_exactly(moto, bucket, PREFIX)
    out = tmp_path / "restored.img"
    await run({"source": {"type": "s3", "bucket": bucket, "prefix": PREFIX,
                          "endpoint_url": moto},
               "destinations": [{"type": "file", "path": str(out)}]})
    assert_volume_file(out, image)


def test_the_manifest_names_the_job_that_wrote_it(moto: str, bucket: str,
                                                  tmp_path: Path) -> None:
    make_image(tmp_path / "src.img", "DD", seed=32)
    job = Job(tmp_path, moto, bucket)
    assert job.run().returncode == 0
    header = json.loads(_manifest(moto, bucket).splitlines()[0])
    spec = parse(job.path.read_bytes(), job.path.name)
    assert header["job"] == {"id": "archive-me", "spec": spec_digest(spec.model_dump_json())}
    assert list(header)[-1] == "job"  # appended: the documented fields keep their order


@pytest.mark.parametrize("other", ["another job", "the same job edited"])
def test_an_archive_of_another_job_is_still_never_overwritten(
        moto: str, bucket: str, tmp_path: Path, other: str) -> None:
    make_image(tmp_path / "src.img", "DZD", seed=33)
    assert Job(tmp_path, moto, bucket).run().returncode == 0
    manifest = _manifest(moto, bucket)
    if other == "another job":
        second = Job(tmp_path, moto, bucket, name="someone-else")
    else:
        second = Job(tmp_path, moto, bucket, zstd_level=3)
    result = second.run()
    assert result.returncode == 2, result.stderr
    assert "an archive already exists" in result.stderr
    assert _manifest(moto, bucket) == manifest


def test_manifest_headers_with_and_without_the_job_field_are_read() -> None:
    base = {"format": "fspd-archive", "version": 1, "created": "2026-11-26T04:21:13+00:00",
            "source": {"type": "file", "path": "/x"}, "origin": "/x", "volume_size": 1 << 30,
            "byte_length": None, "block_size": 524288, "segment_blocks": 64,
            "compression": "zstd", "zstd_level": 3, "description": None, "tags": {},
            "encrypted": False, "parent": None}
    assert parse_header(base, "old").job is None  # archives written before the field
    job = {"id": "j", "spec": "0" * 64}
    assert parse_header({**base, "job": job}, "new").job == job
    with pytest.raises(ManifestError, match="'job'"):
        parse_header({**base, "job": "j"}, "bad")
