"""fspd's S3 archive format (docs/archive-format.md): a JSON-lines manifest written last, and
one zstd object per run of stored blocks. Pure format code lives here; S3 I/O is in store.py."""

from __future__ import annotations

FORMAT_NAME = "fspd-archive"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.jsonl"
SEGMENT_DIR = "segments"
MAX_SEGMENT_BLOCKS = 1024
