"""The archive manifest: JSON lines, written last (its presence means the archive is complete).

Line 1 is the header, then one record per line in ascending block order (a stored segment or a
range of zero blocks), then a trailer with the totals and the SHA-256 of every byte before it.
Each line is compact JSON with keys in a fixed order, so shell tools can read it too.
Reading streams the file: memory does not grow with the archive.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from fspd.archive import FORMAT_NAME, FORMAT_VERSION, MAX_SEGMENT_BLOCKS, SEGMENT_DIR
from fspd.blocks import BLOCK_SIZE
from fspd.errors import TransferFailed

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
COMPRESSIONS = ("zstd",)


class ManifestError(TransferFailed):
    """A manifest that is missing, truncated, malformed or inconsistent."""


def segment_key(first: int, count: int) -> str:
    """A segment's key below the archive prefix; it names the first block and the count, so
    ``zstd -dc | dd seek=FIRST`` restores it without reading the manifest."""
    return f"{SEGMENT_DIR}/{first:012d}.{count}.zst"


def valid_segment_blocks(value: int) -> bool:
    return 1 <= value <= MAX_SEGMENT_BLOCKS and value & (value - 1) == 0


@dataclass(frozen=True, slots=True)
class ParentRef:
    """The archive an incremental archive builds on, pinned by its manifest's SHA-256."""

    bucket: str
    prefix: str
    manifest_sha256: str
    source: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Header:
    source: dict[str, Any]  # {"type": "ebs", "snapshot_id", "region", …} or {"type": "file", …}
    volume_size: int  # bytes
    byte_length: int | None  # the original length, when not a whole volume
    segment_blocks: int
    zstd_level: int
    created: str  # ISO 8601, UTC
    parent: ParentRef | None = None
    origin: str = ""
    description: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    encrypted: bool = False  # the source was an encrypted snapshot
    block_size: int = BLOCK_SIZE
    compression: str = "zstd"
    version: int = FORMAT_VERSION
    # The fspd job that wrote the archive: {"id": job id, "spec": SHA-256 of its job spec}.
    # Lets a rerun of that job recognise its own finished archive. Optional (absent in older
    # archives; readers that do not know it ignore it).
    job: dict[str, str] | None = None

    @property
    def block_count(self) -> int:
        return -(-self.volume_size // self.block_size)


@dataclass(frozen=True, slots=True)
class Segment:
    """Blocks ``first .. first+count-1``, concatenated and zstd-compressed into one object."""

    key: str  # below the archive prefix
    first: int
    count: int
    size: int  # compressed bytes
    sha256: str  # hex SHA-256 of the compressed object
    blocks: tuple[str, ...]  # hex SHA-256 of each uncompressed block, in order

    @property
    def stop(self) -> int:
        return self.first + self.count


@dataclass(frozen=True, slots=True)
class Zeros:
    """Blocks ``[start, stop)`` that are all zeros: recorded, not stored."""

    start: int
    stop: int

    @property
    def first(self) -> int:
        return self.start


Record = Segment | Zeros


@dataclass(frozen=True, slots=True)
class Trailer:
    segments: int
    stored_blocks: int
    zero_blocks: int
    stored_bytes: int
    sha256: str = ""  # of every manifest byte before the trailer line


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=True).encode() + b"\n"


def header_json(h: Header) -> dict[str, Any]:
    parent = None
    if h.parent is not None:
        parent = {"bucket": h.parent.bucket, "prefix": h.parent.prefix,
                  "manifest_sha256": h.parent.manifest_sha256, "source": h.parent.source}
    out = {"format": FORMAT_NAME, "version": h.version, "created": h.created,
           "source": h.source, "origin": h.origin, "volume_size": h.volume_size,
           "byte_length": h.byte_length, "block_size": h.block_size,
           "segment_blocks": h.segment_blocks, "compression": h.compression,
           "zstd_level": h.zstd_level, "description": h.description, "tags": h.tags,
           "encrypted": h.encrypted, "parent": parent}
    if h.job is not None:
        out["job"] = dict(h.job)
    return out


def record_json(r: Record) -> dict[str, Any]:
    if isinstance(r, Zeros):
        return {"zeros": [r.start, r.stop]}
    return {"segment": r.key, "first": r.first, "count": r.count, "size": r.size,
            "sha256": r.sha256, "blocks": list(r.blocks)}


class ManifestWriter:
    """Writes a manifest to a local file, records in ascending order; adjacent zero ranges
    are merged into one record."""

    def __init__(self, path: Path, header: Header) -> None:
        self.path = path
        self.header = header
        self._file: IO[bytes] = path.open("wb")
        self._sha = hashlib.sha256()
        self._next = 0
        self._zeros: Zeros | None = None
        self.totals = Trailer(0, 0, 0, 0)
        self._write(_dumps(header_json(header)))

    def _write(self, line: bytes) -> None:
        self._sha.update(line)
        self._file.write(line)

    def _check_order(self, start: int, stop: int) -> None:
        if start < self._next or stop > self.header.block_count or start >= stop:
            raise ValueError(f"manifest record [{start}, {stop}) out of order or range "
                             f"(next free block {self._next})")
        self._next = stop

    def zeros(self, start: int, stop: int) -> None:
        self._check_order(start, stop)
        if self._zeros is not None and self._zeros.stop == start:
            self._zeros = Zeros(self._zeros.start, stop)
        else:
            self._flush_zeros()
            self._zeros = Zeros(start, stop)

    def segment(self, seg: Segment) -> None:
        self._check_order(seg.first, seg.stop)
        self._flush_zeros()
        self._write(_dumps(record_json(seg)))
        t = self.totals
        self.totals = Trailer(t.segments + 1, t.stored_blocks + seg.count, t.zero_blocks,
                              t.stored_bytes + seg.size)

    def _flush_zeros(self) -> None:
        if self._zeros is not None:
            z, self._zeros = self._zeros, None
            self._write(_dumps(record_json(z)))
            t = self.totals
            self.totals = Trailer(t.segments, t.stored_blocks,
                                  t.zero_blocks + z.stop - z.start, t.stored_bytes)

    @classmethod
    def resume(cls, path: Path, length: int, pending: Zeros | None = None, *,
               cut: int | None = None) -> ManifestWriter:
        """Carry on the manifest file of an interrupted run: keep its first ``length`` bytes
        (what its checkpoint said was durable) and ``pending`` (zeros not yet written), or,
        with ``cut``, only the records before block ``cut``. The running SHA-256, totals and
        order are rebuilt by reading the kept lines again."""
        self = cls.__new__(cls)
        self.path = path
        self._file = path.open("r+b")
        try:
            self._reopen(length, pending, cut)
        except BaseException:
            self._file.close()
            raise
        return self

    def _reopen(self, length: int, pending: Zeros | None, cut: int | None) -> None:
        f = self._file
        first = f.readline()
        if not first.endswith(b"\n") or len(first) > length:
            raise ValueError("the manifest file is shorter than its checkpoint")
        self.header = parse_header(json.loads(first), str(self.path))
        self._sha = hashlib.sha256(first)
        self._next, self._zeros = 0, (pending if cut is None else None)
        self.totals = Trailer(0, 0, 0, 0)
        keep = len(first)
        # A trailing zeros line: the record, its offset, and the SHA-256 and order before it.
        last: tuple[Zeros, int, Any, int] | None = None
        for offset, line, rec in read_records(f, self.header, keep, length, str(self.path)):
            if cut is not None and rec.first >= cut:
                break
            last = ((rec, offset, self._sha.copy(), self._next) if isinstance(rec, Zeros)
                    else None)
            self._sha.update(line)
            self._next, keep = rec.stop, offset + len(line)
            t = self.totals
            if isinstance(rec, Zeros):
                self.totals = Trailer(t.segments, t.stored_blocks,
                                      t.zero_blocks + rec.stop - rec.start, t.stored_bytes)
            else:
                self.totals = Trailer(t.segments + 1, t.stored_blocks + rec.count,
                                      t.zero_blocks, t.stored_bytes + rec.size)
        if self._zeros is None and last is not None:
            # Take a trailing zero range back into memory, so that the zeros written next
            # merge with it (and, after a cut, so that it ends at the cut).
            rec, keep, self._sha, self._next = last
            self._zeros = Zeros(rec.start, rec.stop if cut is None else min(rec.stop, cut))
            t = self.totals
            self.totals = Trailer(t.segments, t.stored_blocks,
                                  t.zero_blocks - (rec.stop - rec.start), t.stored_bytes)
        if self._zeros is not None:
            if self._zeros.start < self._next:
                raise ValueError("the checkpoint's pending zeros overlap the manifest file")
            self._next = self._zeros.stop
        f.truncate(keep)
        f.seek(keep)

    def durable_point(self) -> tuple[int, Zeros | None]:
        """Flush; return (bytes written so far, the zero range not yet written) for a
        checkpoint. ``sync()`` then makes those bytes durable."""
        self._file.flush()
        return self._file.tell(), self._zeros

    def sync(self) -> None:
        os.fsync(self._file.fileno())

    @property
    def next_block(self) -> int:
        """The first block a record may still start at."""
        return self._next

    def finish(self) -> Trailer:
        """Write the trailer and close; the file is then the complete manifest."""
        self._flush_zeros()
        t = self.totals
        trailer = Trailer(t.segments, t.stored_blocks, t.zero_blocks, t.stored_bytes,
                          self._sha.hexdigest())
        self._file.write(_dumps({"end": {
            "segments": trailer.segments, "stored_blocks": trailer.stored_blocks,
            "zero_blocks": trailer.zero_blocks, "stored_bytes": trailer.stored_bytes,
            "sha256": trailer.sha256}}))
        self._file.flush()
        self._file.close()
        return trailer

    def close(self) -> None:
        self._file.close()


def read_records(f: IO[bytes], header: Header, start: int, stop: int, where: str
                 ) -> Iterator[tuple[int, bytes, Record]]:
    """(offset, line, record) of each record line of an unfinished manifest file between
    byte offsets ``start`` (a line start) and ``stop``; every line must be whole."""
    f.seek(start)
    offset = start
    while offset < stop:
        line = f.readline()
        if not line.endswith(b"\n") or offset + len(line) > stop:
            raise ValueError(f"{where}: the manifest file is shorter than its checkpoint")
        rec = parse_record(json.loads(line), header, f"{where} at byte {offset}")
        if isinstance(rec, Trailer):
            raise ValueError(f"{where}: a trailer inside an unfinished manifest")
        yield offset, line, rec
        offset += len(line)


def _int(obj: dict[str, Any], key: str, where: str, *, minimum: int = 0,
         optional: bool = False) -> Any:
    value = obj.get(key)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ManifestError(f"{where}: {key!r} must be an integer >= {minimum}, not {value!r}")
    return value


def parse_header(obj: Any, where: str) -> Header:
    if not isinstance(obj, dict) or obj.get("format") != FORMAT_NAME:
        raise ManifestError(f"{where}: not an {FORMAT_NAME} manifest (first line has no "
                            f"\"format\": \"{FORMAT_NAME}\")")
    version = _int(obj, "version", where, minimum=1)
    if version > FORMAT_VERSION:
        raise ManifestError(f"{where}: format version {version} is newer than this fspd "
                            f"reads ({FORMAT_VERSION}); upgrade fspd")
    if obj.get("block_size") != BLOCK_SIZE:
        raise ManifestError(f"{where}: block_size {obj.get('block_size')!r} is not {BLOCK_SIZE}")
    if obj.get("compression") not in COMPRESSIONS:
        raise ManifestError(f"{where}: unknown compression {obj.get('compression')!r}")
    seg_blocks = _int(obj, "segment_blocks", where, minimum=1)
    if not valid_segment_blocks(seg_blocks):
        raise ManifestError(f"{where}: segment_blocks {seg_blocks} is not a power of two "
                            f"up to {MAX_SEGMENT_BLOCKS}")
    volume_size = _int(obj, "volume_size", where, minimum=1)
    byte_length = _int(obj, "byte_length", where, minimum=1, optional=True)
    if byte_length is not None and byte_length > volume_size:
        raise ManifestError(f"{where}: byte_length {byte_length} exceeds volume_size")
    source = obj.get("source")
    if not isinstance(source, dict) or not isinstance(source.get("type"), str):
        raise ManifestError(f"{where}: 'source' must be an object with a 'type'")
    parent = None
    raw_parent = obj.get("parent")
    if raw_parent is not None:
        if not (isinstance(raw_parent, dict) and isinstance(raw_parent.get("bucket"), str)
                and isinstance(raw_parent.get("prefix"), str)
                and _HEX64.match(str(raw_parent.get("manifest_sha256", "")))
                and isinstance(raw_parent.get("source"), dict)):
            raise ManifestError(f"{where}: 'parent' must name bucket, prefix, manifest_sha256 "
                                "and source")
        parent = ParentRef(raw_parent["bucket"], raw_parent["prefix"],
                           raw_parent["manifest_sha256"], raw_parent["source"])
    tags = obj.get("tags") or {}
    if not isinstance(tags, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                             for k, v in tags.items()):
        raise ManifestError(f"{where}: 'tags' must map strings to strings")
    description = obj.get("description")
    job = obj.get("job")
    if job is not None and not (isinstance(job, dict) and all(
            isinstance(job.get(k), str) for k in ("id", "spec"))):
        raise ManifestError(f"{where}: 'job' must name the writing job's id and spec")
    return Header(source=source, volume_size=volume_size, byte_length=byte_length,
                  segment_blocks=seg_blocks, zstd_level=int(obj.get("zstd_level") or 0),
                  created=str(obj.get("created", "")), parent=parent,
                  origin=str(obj.get("origin", "")),
                  description=description if isinstance(description, str) else None,
                  tags=tags, encrypted=obj.get("encrypted") is True, version=version,
                  job={"id": job["id"], "spec": job["spec"]} if job else None)


def parse_record(obj: Any, header: Header, where: str) -> Record | Trailer:
    if not isinstance(obj, dict):
        raise ManifestError(f"{where}: not a JSON object")
    if "zeros" in obj:
        span = obj["zeros"]
        if not (isinstance(span, list) and len(span) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) for v in span)
                and 0 <= span[0] < span[1] <= header.block_count):
            raise ManifestError(f"{where}: 'zeros' must be [start, stop) inside the volume")
        return Zeros(span[0], span[1])
    if "segment" in obj:
        first = _int(obj, "first", where)
        count = _int(obj, "count", where, minimum=1)
        size = _int(obj, "size", where, minimum=1)
        key, sha, blocks = obj.get("segment"), obj.get("sha256"), obj.get("blocks")
        if key != segment_key(first, count):
            raise ManifestError(f"{where}: segment key {key!r} should be "
                                f"{segment_key(first, count)!r}")
        if not isinstance(sha, str) or not _HEX64.match(sha):
            raise ManifestError(f"{where}: segment {key}: sha256 must be 64 hex digits")
        if (not isinstance(blocks, list) or len(blocks) != count
                or not all(isinstance(b, str) and _HEX64.match(b) for b in blocks)):
            raise ManifestError(f"{where}: segment {key}: 'blocks' must list {count} "
                                "SHA-256 hex digests")
        window = header.segment_blocks
        if first // window != (first + count - 1) // window:
            raise ManifestError(f"{where}: segment {key} crosses a {window}-block boundary")
        if first + count > header.block_count:
            raise ManifestError(f"{where}: segment {key} ends beyond the volume")
        return Segment(key, first, count, size, sha, tuple(blocks))
    if "end" in obj:
        end = obj["end"]
        if not isinstance(end, dict) or not _HEX64.match(str(end.get("sha256", ""))):
            raise ManifestError(f"{where}: malformed trailer")
        return Trailer(_int(end, "segments", where), _int(end, "stored_blocks", where),
                       _int(end, "zero_blocks", where), _int(end, "stored_bytes", where),
                       end["sha256"])
    raise ManifestError(f"{where}: unknown record (not segment, zeros or end)")


@dataclass
class ManifestFile:
    """A manifest in a local file. ``validate()`` reads it once end to end (order, ranges,
    totals, trailer checksum); ``records()`` streams it again afterwards."""

    path: Path
    where: str  # how to name it in errors: s3://bucket/prefix/manifest.jsonl
    header: Header = field(init=False)
    trailer: Trailer | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        with self.path.open("rb") as f:
            first = f.readline()
        self.header = parse_header(self._loads(first, 1), self.where)

    def _loads(self, line: bytes, number: int) -> Any:
        if not line.endswith(b"\n"):
            raise ManifestError(f"{self.where} line {number}: truncated (no newline); the "
                                "manifest is incomplete")
        try:
            return json.loads(line)
        except ValueError as exc:
            raise ManifestError(f"{self.where} line {number}: not JSON: {exc}") from None

    def _scan(self) -> Iterator[tuple[int, Record | Trailer]]:
        with self.path.open("rb") as f:
            f.readline()
            for number, line in enumerate(f, start=2):
                yield number, parse_record(self._loads(line, number), self.header,
                                           f"{self.where} line {number}")

    def validate(self) -> Trailer:
        sha = hashlib.sha256()
        with self.path.open("rb") as f:
            sha.update(f.readline())
            segments = stored = zeros = size = 0
            next_free = 0
            trailer: Trailer | None = None
            for number, line in enumerate(f, start=2):
                where = f"{self.where} line {number}"
                if trailer is not None:
                    raise ManifestError(f"{where}: data after the trailer")
                rec = parse_record(self._loads(line, number), self.header, where)
                if isinstance(rec, Trailer):
                    trailer = rec
                    continue
                sha.update(line)
                start = rec.first
                stop = rec.stop
                if start < next_free:
                    raise ManifestError(f"{where}: block {start} is out of order or overlaps "
                                        "the previous record")
                next_free = stop
                if isinstance(rec, Segment):
                    segments += 1
                    stored += rec.count
                    size += rec.size
                else:
                    zeros += rec.stop - rec.start
        if trailer is None:
            raise ManifestError(f"{self.where}: no trailer line; the manifest is truncated")
        if trailer.sha256 != sha.hexdigest():
            raise ManifestError(f"{self.where}: SHA-256 of the manifest lines is "
                                f"{sha.hexdigest()}, the trailer says {trailer.sha256}")
        if (segments, stored, zeros, size) != (trailer.segments, trailer.stored_blocks,
                                               trailer.zero_blocks, trailer.stored_bytes):
            raise ManifestError(f"{self.where}: totals do not match the trailer")
        self.trailer = trailer
        return trailer

    def records(self) -> Iterator[Record]:
        for _number, rec in self._scan():
            if isinstance(rec, Trailer):
                return
            yield rec
