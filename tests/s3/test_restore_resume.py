"""A restore from S3 that failed part-way resumes from its journal: the blocks already written
are not read again, and the windows holding them do not wait for them (they stalled the
resumed job before)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from fspd import jobs
from fspd.errors import FspdError
from fspd.run import run_job
from tests.s3._support import assert_volume_file, make_image, run, s3_client, settings


async def test_a_failed_restore_resumes_without_reading_what_it_wrote(
        moto: str, bucket: str, tmp_path: Path) -> None:
    image = make_image(tmp_path / "src.img", "D" * 16, seed=31)
    archive = {"type": "s3", "bucket": bucket, "prefix": "resume", "endpoint_url": moto}
    await run({"source": {"type": "file", "path": str(tmp_path / "src.img")},
               "destinations": [archive | {"segment_blocks": 2}]})
    # The last window's segment goes missing: the restore fails there, after the others.
    s3, last = s3_client(moto), "resume/segments/000000000014.2.zst"
    body = s3.get_object(Bucket=bucket, Key=last)["Body"].read()
    s3.delete_object(Bucket=bucket, Key=last)
    out, state = tmp_path / "out.img", tmp_path / "state"
    spec = jobs.validate({"source": archive,
                          "destinations": [{"type": "file", "path": str(out)}]})
    with pytest.raises(FspdError, match=last):
        await run_job(spec, settings(), job_id="restore", state_dir=state)

    s3.put_object(Bucket=bucket, Key=last, Body=body)
    async with asyncio.timeout(60):  # it hung here: skipped blocks held their windows
        result = await run_job(spec, settings(), job_id="restore", state_dir=state)
    assert result["resumed"] and result["blocks_resumed"] >= 8
    assert result["source_reads"] <= 16 - result["blocks_resumed"]
    assert_volume_file(out, image)
