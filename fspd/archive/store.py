"""S3 object I/O for archives: every error names the object (``s3://bucket/key``).

Uploads carry S3's own SHA-256 checksum (x-amz-checksum-sha256), so S3 rejects a body damaged
on the way; objects above ``settings.s3.multipart_threshold`` go up in parts, each with its own
checksum. Reads retry network errors a few times; a missing object is never retried.

Multipart uploads in progress (upload id, parts done with ETag, checksum and size) are exposed
by ``uploads_state()`` for the job's checkpoint; after a crash, ``resume_uploads()`` hands them
back and the next upload of the same key continues that upload (confirmed with ListParts, a
part reused only if the new body's part has the same SHA-256 and S3 has that part) instead of
sending every part again.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import os
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fspd.archive.segments import SegmentMissing
from fspd.aws import AwsTarget, call
from fspd.context import JobContext
from fspd.errors import BadInput, FspdError, PermissionProblem, TransferFailed
from fspd.retry import ApiError, Retrier, Unreachable

MIB = 1 << 20
MIN_PART = 5 * MIB
MAX_PARTS = 10_000
BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_MISSING = frozenset({"NoSuchKey", "404", "NotFound"})
# Keys an archive writer owns below its prefix: its segments and its manifest.
_ARCHIVE_KEY = re.compile(r"^(segments/[0-9]{12}\.[0-9]+\.zst|manifest\.jsonl)$")


class UploadGone(TransferFailed):
    """A multipart upload that no longer exists (aborted, expired or completed)."""


@dataclass(frozen=True, slots=True)
class Part:
    """One uploaded part of a multipart upload."""

    number: int
    etag: str
    checksum: str  # base64 SHA-256 of the part's bytes
    size: int

    def to_json(self) -> list[Any]:
        return [self.number, self.etag, self.checksum, self.size]

    @classmethod
    def from_json(cls, raw: Any) -> Part:
        number, etag, checksum, size = raw
        return cls(int(number), str(etag), str(checksum), int(size))


@dataclass(slots=True)
class Upload:
    """A multipart upload in progress: parts sent by this run, and parts an interrupted run
    sent that S3 confirmed (ListParts) and this run may reuse."""

    upload_id: str
    parts: dict[int, Part] = field(default_factory=dict)
    prior: dict[int, Part] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        known = {**self.prior, **self.parts}
        return {"upload_id": self.upload_id,
                "parts": [known[n].to_json() for n in sorted(known)]}


@dataclass(frozen=True, slots=True)
class S3Location:
    bucket: str
    prefix: str  # no leading or trailing "/"

    def key(self, rel: str) -> str:
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def url(self, rel: str = "") -> str:
        return f"s3://{self.bucket}/{self.key(rel) if rel else self.prefix}"


def clean_prefix(prefix: str, field: str) -> str:
    text = prefix.strip("/")
    if not text or "//" in text or len(text.encode()) > 900 or any(
            ord(c) < 0x20 for c in text):
        raise BadInput(f"{prefix!r} is not a usable key prefix (non-empty, no '//', at most "
                       "900 bytes)", field=field)
    return text


def parse_s3_url(text: str, field: str) -> S3Location:
    """``s3://bucket/prefix`` → S3Location."""
    if not text.startswith("s3://"):
        raise BadInput(f"{text!r} is not an s3://bucket/prefix URL", field=field)
    bucket, _, prefix = text[5:].partition("/")
    if not BUCKET_RE.match(bucket):
        raise BadInput(f"{bucket!r} is not a bucket name", field=field)
    return S3Location(bucket, clean_prefix(prefix, field))


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def tagging(tags: dict[str, str]) -> str:
    return "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in tags.items())


class ObjectStore:
    """One archive location in one bucket."""

    def __init__(self, ctx: JobContext, target: AwsTarget, loc: S3Location) -> None:
        self.ctx = ctx
        self.target = target
        self.loc = loc
        self._uploads: dict[str, Upload] = {}  # key → multipart upload in progress
        self._resumable: dict[str, dict[str, Any]] = {}  # rel → an interrupted run's upload
        self.parts_resumed = 0  # parts of interrupted uploads reused instead of sent again
        s3 = ctx.settings.s3
        self.multipart_threshold = s3.multipart_threshold
        self.part_size = s3.part_size
        if self.part_size < MIN_PART:
            raise BadInput(f"must be at least {MIN_PART} bytes (S3's minimum part size)",
                           field="s3.part_size")

    async def client(self) -> Any:
        return await self.ctx.clients.client("s3", self.target)

    def retrier(self) -> Retrier:
        """The retry layer of this store's requests (botocore makes one attempt per call)."""
        return self.ctx.retrier()

    def _error(self, exc: ApiError, rel: str) -> FspdError:
        url = self.loc.url(rel)
        if exc.code in _MISSING:
            return SegmentMissing(f"{url} does not exist ({exc.operation}: {exc.code})")
        if exc.code == "NoSuchUpload":
            return UploadGone(f"the multipart upload of {url} no longer exists "
                              f"({exc.operation}: {exc.code})")
        if exc.code == "NoSuchBucket":
            return BadInput(f"bucket {self.loc.bucket} does not exist ({self.target.describe()})",
                            field="bucket")
        if exc.code in ("AccessDenied", "Forbidden", "403") or exc.status == 403:
            return PermissionProblem(f"AWS refused {exc.operation} on {url}: the credentials "
                                     f"need s3:{exc.operation}. AWS said: {exc.message}")
        if exc.code == "InvalidObjectState":
            return TransferFailed(f"{url} is archived (Glacier storage class); restore it "
                                  "to a readable class before reading the archive")
        return TransferFailed(f"{exc.operation} {url} failed: {exc.code}: {exc.message}")

    async def _run(self, rel: str, fn: Callable[[], Any]) -> Any:
        async def attempt() -> Any:
            try:
                return await fn()
            except ApiError as exc:
                if exc.status >= 500 or exc.code in ("SlowDown", "RequestTimeout",
                                                     "InternalError"):
                    raise
                raise self._error(exc, rel) from None
        return await self.retrier().run(attempt)

    async def head(self, rel: str) -> dict[str, Any] | None:
        s3 = await self.client()
        try:
            return await self._run(rel, lambda: call(s3, "HeadObject", Bucket=self.loc.bucket,
                                                     Key=self.loc.key(rel)))
        except SegmentMissing:
            return None

    async def get(self, rel: str) -> bytes:
        s3 = await self.client()

        async def fetch() -> bytes:
            resp = await call(s3, "GetObject", Bucket=self.loc.bucket, Key=self.loc.key(rel))
            async with resp["Body"] as body:
                return bytes(await body.read())
        return await self._run(rel, fetch)

    async def download(self, rel: str, path: Path) -> str:
        """Stream an object to a local file; return the hex SHA-256 of its bytes."""
        s3 = await self.client()

        async def fetch() -> str:
            sha = hashlib.sha256()
            resp = await call(s3, "GetObject", Bucket=self.loc.bucket, Key=self.loc.key(rel))
            with path.open("wb") as out:
                async with resp["Body"] as body:
                    async for chunk in body.iter_chunks(MIB):
                        sha.update(chunk)
                        await self.ctx.offload(out.write, chunk)
            return sha.hexdigest()
        return await self._run(rel, fetch)

    async def put(self, rel: str, body: bytes | io.BytesIO, sha256: bytes,
                  extra: dict[str, Any], *,
                  if_none_match: bool = False) -> None:
        """Put one object; a ``BytesIO`` body is sent without a copy (parts are copied one
        at a time)."""
        stream = body if isinstance(body, io.BytesIO) else io.BytesIO(body)  # shares bytes
        size = stream.seek(0, io.SEEK_END)
        if size > self.multipart_threshold:
            async def parts() -> AsyncIterator[bytes]:
                for i in range(0, size, self.part_size):
                    stream.seek(i)
                    yield stream.read(self.part_size)
            await self._multipart(rel, parts(), extra)
            return
        s3 = await self.client()
        params = dict(extra, Bucket=self.loc.bucket, Key=self.loc.key(rel), Body=stream,
                      ChecksumAlgorithm="SHA256", ChecksumSHA256=_b64(sha256))
        if if_none_match:
            params["IfNoneMatch"] = "*"

        def attempt() -> Any:
            stream.seek(0)  # a retry sends the whole body again
            return call(s3, "PutObject", **params)
        try:
            await self._run(rel, attempt)
        except TransferFailed as exc:
            if "PreconditionFailed" in str(exc):
                raise TransferFailed(f"{self.loc.url(rel)} appeared while this job ran "
                                     "(another job wrote the same archive?)") from None
            raise

    async def put_file(self, rel: str, path: Path, extra: dict[str, Any], *,
                       if_none_match: bool = False) -> None:
        size = (await self.ctx.offload(path.stat)).st_size
        if size <= self.multipart_threshold:
            data = await self.ctx.offload(path.read_bytes)
            await self.put(rel, data, hashlib.sha256(data).digest(), extra,
                           if_none_match=if_none_match)
            return
        part = max(self.part_size, -(-size // MAX_PARTS))

        async def parts() -> AsyncIterator[bytes]:
            fd = os.open(path, os.O_RDONLY)
            try:
                for offset in range(0, size, part):
                    yield await self.ctx.offload(os.pread, fd, part, offset)
            finally:
                os.close(fd)
        await self._multipart(rel, parts(), extra)

    async def _multipart(self, rel: str, parts: AsyncIterator[bytes],
                         extra: dict[str, Any]) -> None:
        s3 = await self.client()
        bucket, key = self.loc.bucket, self.loc.key(rel)
        upload = await self._continue(rel)
        if upload is None:
            resp = await self._run(rel, lambda: call(
                s3, "CreateMultipartUpload", Bucket=bucket, Key=key,
                ChecksumAlgorithm="SHA256", **extra))
            upload = Upload(str(resp["UploadId"]))
        self._uploads[key] = upload
        upload_id = upload.upload_id
        try:
            number = 0
            async for chunk in parts:
                number += 1
                checksum = _b64(await self.ctx.offload(lambda c=chunk: hashlib.sha256(c)
                                                       .digest()))
                prior = upload.prior.get(number)
                if prior is not None and (prior.checksum, prior.size) == (checksum, len(chunk)):
                    upload.parts[number] = prior
                    self.parts_resumed += 1
                    continue
                part = await self._run(rel, lambda n=number, c=chunk, s=checksum: call(
                    s3, "UploadPart", Bucket=bucket, Key=key, UploadId=upload_id,
                    PartNumber=n, Body=c, ChecksumAlgorithm="SHA256", ChecksumSHA256=s))
                upload.parts[number] = Part(number, str(part["ETag"]), checksum, len(chunk))
            done = [{"PartNumber": p.number, "ETag": p.etag, "ChecksumSHA256": p.checksum}
                    for p in (upload.parts[n] for n in range(1, number + 1))]
            await self._run(rel, lambda: call(
                s3, "CompleteMultipartUpload", Bucket=bucket, Key=key, UploadId=upload_id,
                MultipartUpload={"Parts": done}))
        except BaseException:
            await self._abort_upload(key, upload_id)
            raise
        self._uploads.pop(key, None)

    def uploads_state(self) -> dict[str, dict[str, Any]]:
        """The multipart uploads in progress, by key below the prefix, for a checkpoint;
        an interrupted run's uploads not yet continued are kept too."""
        out = dict(self._resumable)
        for key, upload in self._uploads.items():
            out[key[len(self.loc.key("")):]] = upload.to_json()
        return out

    def resume_uploads(self, uploads: dict[str, dict[str, Any]]) -> None:
        """Uploads an interrupted run left in progress (from ``uploads_state``): the next
        upload of each key continues its upload."""
        self._resumable = dict(uploads)

    async def _continue(self, rel: str) -> Upload | None:
        """The interrupted run's upload of ``rel`` with the parts S3 confirms, or None (and a
        note, when it is gone) so that a new upload starts."""
        saved = self._resumable.pop(rel, None)
        if saved is None:
            return None
        try:
            upload = Upload(str(saved["upload_id"]))
            recorded = [Part.from_json(raw) for raw in saved.get("parts", [])]
        except (KeyError, TypeError, ValueError):
            return None
        try:
            listed = await self._list_parts(rel, upload.upload_id)
        except UploadGone:
            self.ctx.note(f"the multipart upload of {self.loc.url(rel)} from the interrupted "
                          "run no longer exists (aborted or expired); uploading it again")
            return None
        upload.prior = {p.number: p for p in recorded
                        if listed.get(p.number) == (p.etag, p.size)}
        return upload

    async def _list_parts(self, rel: str, upload_id: str) -> dict[int, tuple[str, int]]:
        s3 = await self.client()
        out: dict[int, tuple[str, int]] = {}
        marker = 0
        while True:
            page = await self._run(rel, lambda m=marker: call(
                s3, "ListParts", Bucket=self.loc.bucket, Key=self.loc.key(rel),
                UploadId=upload_id, PartNumberMarker=m))
            for part in page.get("Parts", []) or []:
                out[int(part["PartNumber"])] = (str(part["ETag"]), int(part["Size"]))
            if not page.get("IsTruncated"):
                return out
            marker = int(page["NextPartNumberMarker"])

    async def _abort_upload(self, key: str, upload_id: str) -> None:
        mine = self._uploads.get(key)
        if mine is not None and mine.upload_id == upload_id:
            del self._uploads[key]
        s3 = await self.client()
        # If this fails too, an S3 lifecycle rule cleans up abandoned uploads.
        with contextlib.suppress(ApiError, OSError, Unreachable):
            await call(s3, "AbortMultipartUpload", Bucket=self.loc.bucket, Key=key,
                       UploadId=upload_id)

    async def abort_all(self) -> None:
        for key, upload in list(self._uploads.items()):
            await self._abort_upload(key, upload.upload_id)

    async def abort_stale_uploads(self) -> int:
        """Abort every multipart upload of this archive's own keys (segments, manifest) that
        this store is not running: what interrupted runs left behind, including uploads
        started after their last checkpoint. Returns how many were aborted."""
        s3 = await self.client()
        base = self.loc.key("")
        ours = {(key, u.upload_id) for key, u in self._uploads.items()}
        stale: list[tuple[str, str]] = []
        markers: dict[str, str] = {}
        while True:
            page = await self._run("", lambda m=markers: call(
                s3, "ListMultipartUploads", Bucket=self.loc.bucket, Prefix=base, **m))
            for up in page.get("Uploads", []) or []:
                key, upload_id = str(up["Key"]), str(up["UploadId"])
                if _ARCHIVE_KEY.match(key[len(base):]) and (key, upload_id) not in ours:
                    stale.append((key, upload_id))
            if not page.get("IsTruncated"):
                break
            markers = {"KeyMarker": page["NextKeyMarker"],
                       "UploadIdMarker": page["NextUploadIdMarker"]}
        for key, upload_id in stale:
            await self._abort_upload(key, upload_id)
        self._resumable.clear()
        return len(stale)

    async def list_sizes(self, under: str) -> AsyncIterator[tuple[str, int]]:
        """(name below the prefix, size) of every object under ``under``, in key order."""
        s3 = await self.client()
        base = self.loc.key("")
        token: str | None = None
        while True:
            params: dict[str, Any] = {"Bucket": self.loc.bucket, "Prefix": base + under}
            if token:
                params["ContinuationToken"] = token
            page = await self._run(under, lambda p=params: call(s3, "ListObjectsV2", **p))
            for obj in page.get("Contents", []) or []:
                yield str(obj["Key"])[len(base):], int(obj["Size"])
            token = page.get("NextContinuationToken")
            if not token:
                return

    async def list_names(self) -> AsyncIterator[str]:
        """Object names directly below the prefix (``prefix/NAME``), in S3's order."""
        s3 = await self.client()
        base = self.loc.key("")
        token: str | None = None
        while True:
            params: dict[str, Any] = {"Bucket": self.loc.bucket, "Prefix": base,
                                      "Delimiter": "/"}
            if token:
                params["ContinuationToken"] = token
            page = await self._run("", lambda p=params: call(s3, "ListObjectsV2", **p))
            for obj in page.get("Contents", []) or []:
                yield str(obj["Key"])[len(base):]
            token = page.get("NextContinuationToken")
            if not token:
                return
