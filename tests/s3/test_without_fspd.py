"""The procedures in docs/archive-format.md check and restore an archive with zstd, sha256sum
and dd alone (the shell blocks are taken from the document, so the document stays true)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.s3._support import assert_volume_file, make_image, run, s3_client

DOC = Path(__file__).resolve().parents[2] / "docs" / "archive-format.md"
pytestmark = pytest.mark.skipif(not (shutil.which("zstd") and shutil.which("sha256sum")),
                                reason="needs the zstd and sha256sum command-line tools")


def doc_block(marker: str) -> str:
    for block in re.findall(r"```sh\n(.*?)```", DOC.read_text(), flags=re.S):
        if block.startswith(f"# fspd-doc: {marker}\n"):
            return str(block)
    raise AssertionError(f"no '# fspd-doc: {marker}' block in {DOC}")


def download_archive(s3: Any, bucket: str, prefix: str, into: Path) -> None:
    for obj in s3.list_objects_v2(Bucket=bucket, Prefix=prefix + "/")["Contents"]:
        path = into / obj["Key"][len(prefix) + 1:]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read())


def bash(script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", script], cwd=cwd, capture_output=True, text=True,
                          timeout=60, check=False)


async def test_documented_shell_procedure_checks_and_restores_an_archive(
        moto: str, bucket: str, tmp_path: Path) -> None:
    image = make_image(tmp_path / "src.img", "DCZH" + "H" * 62 + "DDDT", seed=5)
    await run({"source": {"type": "file", "path": str(tmp_path / "src.img")},
               "destinations": [{"type": "s3", "bucket": bucket, "prefix": "sh/a",
                                 "endpoint_url": moto}]})
    work = tmp_path / "work"
    (work / "archive").mkdir(parents=True)
    download_archive(s3_client(moto), bucket, "sh/a", work / "archive")

    check = bash(doc_block("check"), work / "archive")
    assert check.returncode == 0, check.stdout + check.stderr
    assert "manifest.jsonl: OK" in check.stdout
    assert "segments/000000000066.4.zst: OK" in check.stdout
    assert "segments/000000000066.4.zst blocks: OK" in check.stdout

    restore = bash(doc_block("restore"), work / "archive")
    assert restore.returncode == 0, restore.stderr
    assert_volume_file(work / "restored.img", image)

    segment = work / "archive" / "segments" / "000000000000.2.zst"
    body = bytearray(segment.read_bytes())
    body[-9] ^= 0x40
    segment.write_bytes(bytes(body))
    check = bash(doc_block("check"), work / "archive")
    assert check.returncode != 0
    assert "segments/000000000000.2.zst: FAILED" in check.stdout
