"""Every source and sink the suite tries, each able to put an image in place (a source) or
read back what it was given (a sink), with its own way to fail a write. Built per test from
the fixtures it needs, so a test of files starts neither moto nor a loop device."""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
import zstandard
from aiobotocore.session import get_session

from fspd.blocks import BLOCK_SIZE
from fspd.config import Settings
from fspd.jobs import JobSpec
from tests.conformance import harness
from tests.conformance.memory_sink import VOLUMES, MemorySinkSpec
from tests.conftest import client_config
from tests.images import put_snapshot

B = BLOCK_SIZE
BUCKET = "fspd-conformance"
SOURCES = ("file", "device", "ebs", "ebs-delta", "chain", "s3", "fsp")
SINKS = ("file", "device", "ebs", "s3", "memory")


def blocks_of(image: bytes) -> dict[int, bytes]:
    """The blocks a writer stores for ``image``: every block except holes; written zeros
    (make_image's 'Z') are kept as b"" (a zero block)."""
    out: dict[int, bytes] = {}
    for index in range(0, -(-len(image) // B)):
        data = image[index * B:(index + 1) * B]
        out[index] = b"" if not any(data) else data
    return out


def padded(image: bytes, to: int = 512) -> bytes:
    return image + bytes(-len(image) % to)


@dataclass
class Env:
    """What a test has: its directory and, fetched on demand, the emulator, moto, a loop
    device; cleanups run when the test ends."""

    request: pytest.FixtureRequest
    tmp_path: Path
    devices: list[str] = field(default_factory=list)
    cleanups: list[Callable[[], Any]] = field(default_factory=list)

    @property
    def emulator(self) -> Any:
        return self.request.getfixturevalue("emulator")

    @property
    def moto(self) -> str:
        url = str(self.request.getfixturevalue("moto"))
        s3 = boto3.client("s3", endpoint_url=url, region_name="us-east-1")
        if BUCKET not in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
            s3.create_bucket(Bucket=BUCKET)
        return url

    def s3(self) -> Any:
        return boto3.client("s3", endpoint_url=self.moto, region_name="us-east-1")

    async def put_snapshot(self, blocks: dict[int, bytes], parent: str | None = None) -> str:
        """A snapshot built with a plain aiobotocore client (not fspd's code)."""
        async with get_session().create_client(
                "ebs", region_name="us-east-1", endpoint_url=self.emulator.url,
                config=client_config()) as ebs:
            return await put_snapshot(ebs, blocks, parent=parent)

    def loop_device(self, content: bytes, size: int) -> str:
        """A loop device over a sparse file of ``size`` bytes starting with ``content``."""
        if os.geteuid() != 0 or not shutil.which("losetup"):
            pytest.skip("a block device needs root and losetup (loop devices)")
        backing = self.tmp_path / f"backing-{uuid.uuid4().hex[:6]}.img"
        with open(backing, "wb") as f:
            f.write(content)
            f.truncate(size)
        made = subprocess.run(["losetup", "--find", "--show", str(backing)],
                              capture_output=True, text=True, check=False)
        if made.returncode != 0:
            pytest.skip(f"cannot create a loop device here: {made.stderr.strip()}")
        device = made.stdout.strip()
        self.devices.append(device)
        self.cleanups.append(lambda: subprocess.run(["losetup", "-d", device], check=False))
        return device

    def settings(self) -> Settings:
        return harness.settings(tuple(self.devices))

    def close(self) -> None:
        for cleanup in reversed(self.cleanups):
            cleanup()


# -- sources ---------------------------------------------------------------------------------

@dataclass
class Placed:
    """An image put in place behind a source: the job reading it, and where it is read to."""

    job: JobSpec
    expected: bytes  # the volume starts with these bytes; zeros follow


async def place(name: str, env: Env, image: bytes, path: Path) -> Placed:
    if name == "file":
        return Placed(JobSpec(source={"type": "file", "path": str(path)}), image)
    if name == "device":
        content = padded(image)
        device = env.loop_device(content, len(content))
        return Placed(JobSpec(source={"type": "file", "path": device}), content)
    if name in ("ebs", "ebs-delta", "chain"):
        url = env.emulator.url
        if name == "ebs":
            snap = await env.put_snapshot(blocks_of(image))
            return Placed(JobSpec(source={"type": "ebs", "snapshot_id": snap,
                                          "endpoint_url": url}), padded(image, B))
        # Block 0 of every test image is data, so the newer snapshot replaces the base's.
        base = await env.put_snapshot({0: b"the base snapshot's block"})
        snap = await env.put_snapshot(blocks_of(image), parent=base)
        if name == "ebs-delta":
            return Placed(JobSpec(source={"type": "ebs", "snapshot_id": snap,
                                          "base_snapshot_id": base, "endpoint_url": url}),
                          padded(image, B))
        return Placed(JobSpec(source={"type": "ebs-chain", "snapshot_ids": [base, snap],
                                      "endpoint_url": url},
                              destinations=[{"type": "ebs", "endpoint_url": url}]),
                      padded(image, B))
    if name == "s3":
        prefix = f"src/{uuid.uuid4().hex[:8]}"
        write = JobSpec(source={"type": "file", "path": str(path)})
        await harness.transfer(write, {"type": "s3", "bucket": BUCKET, "prefix": prefix,
                                       "endpoint_url": env.moto, "segment_blocks": 2},
                               env.settings())
        return Placed(JobSpec(source={"type": "s3", "bucket": BUCKET, "prefix": prefix,
                                      "endpoint_url": env.moto}), image)
    if name == "fsp":
        prefix = f"fsp/snap-0123456789abcdef{uuid.uuid4().hex[:1]}.1"
        # FSP's archives always end with the volume's last block (a zero one here): without
        # it, fspd reports the archive incomplete (FSP's lost-last-segment bug).
        write_fsp_archive(env.s3(), prefix, blocks_of(image) | {(1 << 30) // B - 1: b""})
        return Placed(JobSpec(source={"type": "s3", "bucket": BUCKET, "prefix": prefix,
                                      "endpoint_url": env.moto, "format": "fsp"}),
                      padded(image, B))
    raise AssertionError(name)


def write_fsp_archive(s3: Any, prefix: str, blocks: dict[int, bytes]) -> None:
    """FSP's key layout: runs of allocated blocks cut at every 64-block boundary, one zstd
    frame each, keyed by the URL-safe base64 SHA-256 of the raw run."""
    runs: list[list[int]] = []
    for index in sorted(blocks):
        if runs and runs[-1][-1] + 1 == index and index % 64:
            runs[-1].append(index)
        else:
            runs.append([index])
    for run in runs:
        raw = b"".join(blocks[i].ljust(B, b"\0") for i in run)
        checksum = base64.urlsafe_b64encode(hashlib.sha256(raw).digest()).decode()
        s3.put_object(Bucket=BUCKET, Key=f"{prefix}/{run[0]}.{checksum}.{len(run)}.zstd",
                      Body=zstandard.ZstdCompressor(level=1).compress(raw))


# -- sinks -----------------------------------------------------------------------------------

class SinkEnd:
    """A destination under test: its spec, how to read back what it holds, how to make its
    writes fail."""

    name = ""
    may_be_complete = True  # has the already-complete capability

    def __init__(self, env: Env) -> None:
        self.env = env

    def dest(self) -> Any:
        raise NotImplementedError

    async def read(self, result: dict[str, Any], length: int) -> bytes:
        raise NotImplementedError

    def prepare_to_fail(self) -> None:
        """Called before ``dest``, in the failing-write test only."""

    def break_writes(self) -> None:
        """Called once the sink is open, before its first write."""
        raise NotImplementedError


class FileEnd(SinkEnd):
    name, may_be_complete = "file", False

    def __init__(self, env: Env) -> None:
        super().__init__(env)
        self.path = env.tmp_path / "out.img"

    def dest(self) -> Any:
        return {"type": "file", "path": str(self.path)}

    async def read(self, result: dict[str, Any], length: int) -> bytes:
        with open(self.path, "rb") as f:
            return f.read(length)

    def prepare_to_fail(self) -> None:
        """The target goes on a filesystem of its own, small enough to fill."""
        small = self.env.tmp_path / "small-fs"
        small.mkdir()
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(small)],
                                 capture_output=True, text=True, check=False)
        if mounted.returncode != 0:
            pytest.skip(f"cannot mount a small filesystem to fill: {mounted.stderr.strip()}")
        self.env.cleanups.append(lambda: subprocess.run(["umount", "-l", str(small)],
                                                        check=False))
        self.path = small / "out.img"

    def break_writes(self) -> None:
        """The disk fills up (another writer): every later write fails with ENOSPC."""
        fd = os.open(self.path.parent / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while os.write(fd, bytes(1 << 16)):
                pass
        except OSError:
            pass
        finally:
            os.close(fd)


class DeviceEnd(FileEnd):
    name = "device"

    def __init__(self, env: Env) -> None:
        super().__init__(env)
        self.device = env.loop_device(b"\xee" * B, 1 << 30)  # a used disk of 1 GiB
        self.path = Path(self.device)

    def prepare_to_fail(self) -> None:
        pass

    def break_writes(self) -> None:
        """A device made read-only refuses writes through descriptors already open."""
        subprocess.run(["blockdev", "--setro", self.device], check=True)
        self.env.cleanups.insert(0, lambda: subprocess.run(
            ["blockdev", "--setrw", self.device], check=False))


class EbsEnd(SinkEnd):
    name = "ebs"

    def dest(self) -> Any:
        return {"type": "ebs", "endpoint_url": self.env.emulator.url}

    async def read(self, result: dict[str, Any], length: int) -> bytes:
        return bytes(self.env.emulator.image(result["snapshot_id"], offset=0, length=length))

    def break_writes(self) -> None:
        self.env.emulator.faults(error_rate=1.0, operations=["PutSnapshotBlock"])


class S3End(SinkEnd):
    name = "s3"

    def __init__(self, env: Env) -> None:
        super().__init__(env)
        self.prefix = f"dst/{uuid.uuid4().hex[:8]}"

    def dest(self) -> Any:
        return {"type": "s3", "bucket": BUCKET, "prefix": self.prefix,
                "endpoint_url": self.env.moto, "segment_blocks": 2}

    async def read(self, result: dict[str, Any], length: int) -> bytes:
        volume = uuid.uuid4().hex
        await harness.transfer(JobSpec(source={"type": "s3", "bucket": BUCKET,
                                               "prefix": self.prefix,
                                               "endpoint_url": self.env.moto}),
                               MemorySinkSpec(volume=volume), self.env.settings())
        return VOLUMES.pop(volume).read(0, length, B)

    def break_writes(self) -> None:
        """The bucket is gone: every later PutObject fails (NoSuchBucket)."""
        s3 = self.env.s3()
        for item in s3.list_objects_v2(Bucket=BUCKET).get("Contents", []):
            s3.delete_object(Bucket=BUCKET, Key=item["Key"])
        s3.delete_bucket(Bucket=BUCKET)


class MemoryEnd(SinkEnd):
    """The toy sink of memory_sink.py: it passes the same suite."""

    name = "memory"

    def __init__(self, env: Env, complete: bool = False) -> None:
        super().__init__(env)
        self.volume, self.complete = uuid.uuid4().hex, complete
        env.cleanups.append(lambda: VOLUMES.pop(self.volume, None))

    def dest(self) -> Any:
        return MemorySinkSpec(volume=self.volume, complete=self.complete)

    async def read(self, result: dict[str, Any], length: int) -> bytes:
        return VOLUMES[self.volume].read(0, length, B)

    def break_writes(self) -> None:
        VOLUMES[self.volume].fail_writes = True


SINK_ENDS: dict[str, type[SinkEnd]] = {"file": FileEnd, "device": DeviceEnd, "ebs": EbsEnd,
                                       "s3": S3End, "memory": MemoryEnd}


@pytest.fixture
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Env]:
    e = Env(request, tmp_path)
    yield e
    e.close()
