"""Job specs: one source and zero or more destinations, from TOML or JSON.

A job file either spells the shape out (``[source]`` and ``[[destinations]]``) or uses one of
FSP's verbs as a shorthand (``verb = "download"``, ``snapshot_id = …``, ``path = …``); both
become the same :class:`JobSpec`. Validation errors name the field and never show a traceback.
"""

from __future__ import annotations

import json
import re
import tomllib
from typing import Annotated, Any, ClassVar, Literal, Union, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from fspd.errors import BadInput

MAX_JOB_FILE_BYTES = 1 << 20
SNAPSHOT_ID_RE = r"^snap-[0-9a-f]{8}(?:[0-9a-f]{9})?$"
REGION_RE = r"^[a-z]{2}(?:-[a-z]+)+-\d{1,2}$"
VERBS = ("list", "diff", "download", "deltadownload", "upload", "copy", "sync", "fanout",
         "multiclone")
SNAPSHOT_OPTIONS = ("parent_snapshot_id", "description", "tags", "encrypted", "kms_key_arn",
                    "timeout_minutes", "client_token", "volume_size_gib")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    # A source whose reads are EBS Direct requests (priced in a dry run's plan).
    reads_ebs_direct: ClassVar[bool] = False


SnapshotId = Annotated[str, Field(pattern=SNAPSHOT_ID_RE)]


class AwsEndpointSpec(_Strict):
    region: Annotated[str, Field(pattern=REGION_RE)] | None = None
    profile: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    endpoint_url: Annotated[str, Field(pattern=r"^https?://[^\s]+$", max_length=2048)] | None = None
    role_arn: Annotated[str, Field(pattern=r"^arn:aws[a-z-]*:iam::\d{12}:role/.+$")] | None = None
    external_id: Annotated[str, Field(min_length=2, max_length=1224)] | None = None
    # Its region is checked with EC2's DescribeRegions before the job starts (S3 has no EC2
    # to ask: an S3-compatible store, say).
    regions_from_ec2: ClassVar[bool] = True


class EbsSourceSpec(AwsEndpointSpec):
    reads_ebs_direct: ClassVar[bool] = True
    type: Literal["ebs"]
    snapshot_id: SnapshotId
    # With a base, the source is the blocks changed from base_snapshot_id to snapshot_id.
    base_snapshot_id: SnapshotId | None = None


class EbsChainSourceSpec(AwsEndpointSpec):
    """A lineage of snapshots, oldest first, brought over one sync step at a time."""

    type: Literal["ebs-chain"]
    snapshot_ids: Annotated[list[SnapshotId], Field(min_length=2, max_length=1000)]

    @field_validator("snapshot_ids")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("a snapshot appears twice in the chain")
        return value


def _local_path(value: str) -> str:
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ValueError("a file or device path: no NUL or other control characters")
    return value


LocalPath = Annotated[str, Field(min_length=1, max_length=4096), AfterValidator(_local_path)]


class FileSourceSpec(_Strict):
    type: Literal["file"]
    path: LocalPath


class FileDestinationSpec(_Strict):
    type: Literal["file"]
    path: LocalPath
    mode: Literal["image", "in-place"] = "image"
    name: Annotated[str, Field(min_length=1, max_length=64)] | None = None


class EbsDestinationSpec(AwsEndpointSpec):
    type: Literal["ebs"]
    name: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    parent_snapshot_id: SnapshotId | None = None
    volume_size_gib: Annotated[int, Field(ge=1, le=65536)] | None = None
    description: Annotated[str, Field(max_length=255)] | None = None
    tags: dict[Annotated[str, Field(min_length=1, max_length=127)],
               Annotated[str, Field(max_length=255)]] = Field(default_factory=dict)
    copy_tags: bool = True
    encrypted: bool | None = None
    kms_key_arn: Annotated[str, Field(min_length=1, max_length=2048)] | None = None
    timeout_minutes: Annotated[int, Field(ge=10, le=4320)] | None = None
    client_token: Annotated[str, Field(pattern=r"^[\x21-\x7e]{1,64}$")] | None = None
    skip_zero_blocks: bool = True

    @field_validator("tags")
    @classmethod
    def _few_tags(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) > 50:
            raise ValueError("at most 50 tags")
        return _no_reserved_tags(value)


def _no_reserved_tags(tags: dict[str, str]) -> dict[str, str]:
    """AWS reserves the ``aws:`` prefix (any case): refused here, before any request."""
    for key in tags:
        if key.lower().startswith("aws:"):
            raise ValueError(f"tag key {key!r}: the 'aws:' prefix is reserved by AWS")
    return tags


S3Bucket = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")]


def _s3_prefix(value: str) -> str:
    if (not value or value[0] == "/" or value[-1] == "/" or "//" in value
            or any(ord(c) < 0x20 for c in value) or len(value.encode()) > 900):
        raise ValueError("a key prefix like 'backups/vol1': no leading or trailing '/', no "
                         "'//', no control characters, at most 900 bytes")
    return value


S3Prefix = Annotated[str, AfterValidator(_s3_prefix)]


class S3SourceSpec(AwsEndpointSpec):
    """An archive in S3 (getfroms3): fspd's format, or the key layout FSP wrote."""

    regions_from_ec2: ClassVar[bool] = False
    type: Literal["s3"]
    bucket: S3Bucket
    prefix: S3Prefix
    format: Literal["fspd", "fsp"] = "fspd"
    # FSP never wrote an archive's last segment: restore what exists and report the gap.
    allow_incomplete: bool = False


class S3DestinationSpec(AwsEndpointSpec):
    """A new archive in S3 (movetos3); see docs/archive-format.md."""

    regions_from_ec2: ClassVar[bool] = False
    type: Literal["s3"]
    name: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    bucket: S3Bucket
    prefix: S3Prefix
    storage_class: Literal["STANDARD", "STANDARD_IA", "ONEZONE_IA", "INTELLIGENT_TIERING",
                           "GLACIER_IR", "GLACIER", "DEEP_ARCHIVE"] | None = None
    sse: Literal["AES256", "aws:kms"] | None = None
    kms_key_id: Annotated[str, Field(min_length=1, max_length=2048)] | None = None
    tags: dict[Annotated[str, Field(min_length=1, max_length=128)],
               Annotated[str, Field(max_length=256)]] = Field(default_factory=dict)
    zstd_level: Annotated[int, Field(ge=-7, le=22)] = 3
    segment_blocks: Annotated[int, Field(ge=1, le=1024)] = 64
    # The archive of the source's base_snapshot_id (a prefix in the same bucket, or
    # s3://bucket/prefix): the new archive then holds only the blocks changed since.
    parent_prefix: Annotated[str, Field(min_length=1, max_length=1024)] | None = None

    @field_validator("tags")
    @classmethod
    def _s3_tags(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) > 10:
            raise ValueError("S3 allows at most 10 tags per object")
        return _no_reserved_tags(value)

    @field_validator("segment_blocks")
    @classmethod
    def _power_of_two(cls, value: int) -> int:
        if value & (value - 1):
            raise ValueError("segment_blocks must be a power of two (1, 2, 4, … 1024)")
        return value

    @model_validator(mode="after")
    def _kms_needs_sse(self) -> S3DestinationSpec:
        if self.kms_key_id and self.sse != "aws:kms":
            raise ValueError("kms_key_id needs sse = \"aws:kms\"")
        return self


SOURCE_SPECS = (EbsSourceSpec, EbsChainSourceSpec, FileSourceSpec, S3SourceSpec)
DESTINATION_SPECS = (EbsDestinationSpec, FileDestinationSpec, S3DestinationSpec)
Source = Annotated[Union[SOURCE_SPECS], Field(discriminator="type")]  # noqa: UP007
Destination = Annotated[Union[DESTINATION_SPECS], Field(discriminator="type")]  # noqa: UP007


def type_name(spec_class: type) -> str:
    """A spec class's ``type`` as written in job files (its ``Literal``); the class name for
    a class without one."""
    annotation = getattr(spec_class, "model_fields", {}).get("type")
    args = get_args(annotation.annotation) if annotation is not None else ()
    return str(args[0]) if args else spec_class.__name__


TYPE_NAMES = tuple(sorted({type_name(c) for c in SOURCE_SPECS + DESTINATION_SPECS}))


class JobSpec(_Strict):
    version: Literal[1] = 1
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")] | None = None
    priority: Annotated[int, Field(ge=-1000, le=1000)] = 0
    dry_run: bool = False
    source: Source
    destinations: Annotated[list[Destination], Field(max_length=64)] = Field(
        default_factory=list)
    on_destination_failure: Literal["fail", "drop"] = "fail"

    @model_validator(mode="after")
    def _coherent(self) -> JobSpec:
        src, dests = self.source, self.destinations
        ebs_dests = [(i, d) for i, d in enumerate(dests) if isinstance(d, EbsDestinationSpec)]
        file_dests = [(i, d) for i, d in enumerate(dests) if isinstance(d, FileDestinationSpec)]
        if isinstance(src, EbsChainSourceSpec) and (len(dests) != 1 or not ebs_dests):
            raise PydanticCustomError("shape", "a chain source needs exactly one ebs "
                                      "destination", {"loc": "destinations"})
        delta = isinstance(src, EbsSourceSpec) and src.base_snapshot_id
        for i, d in ebs_dests:
            _check_encryption(i, d)
            if delta and not d.parent_snapshot_id:
                raise PydanticCustomError(
                    "shape", "required when the source is a delta (sync): the copy of the "
                    "base snapshot in the destination", {"loc": f"destinations[{i}]."
                                                         "parent_snapshot_id"})
        for i, d in file_dests:
            if delta and d.mode != "in-place":
                raise PydanticCustomError(
                    "shape", "must be 'in-place' when the source is a delta (deltadownload)",
                    {"loc": f"destinations[{i}].mode"})
            if isinstance(src, FileSourceSpec):
                raise PydanticCustomError("shape", "a file source needs ebs or s3 "
                                          "destinations", {"loc": f"destinations[{i}].type"})
        seen: dict[Any, int] = {}
        for i, d in enumerate(dests):
            key: Any
            if isinstance(d, EbsDestinationSpec):
                key = ("ebs", d.region, d.profile, d.role_arn, d.endpoint_url)
            elif isinstance(d, FileDestinationSpec):
                key = ("file", d.path)
            else:
                continue
            if key in seen:
                raise PydanticCustomError(
                    "shape", f"the same destination as destinations[{seen[key]}] is listed "
                    "twice", {"loc": f"destinations[{i}]"})
            seen[key] = i
        names = [d.name for d in dests if d.name]
        if len(set(names)) != len(names):
            raise PydanticCustomError("shape", "destination names must be unique",
                                      {"loc": "destinations"})
        return self

    def destination_names(self) -> list[str]:
        names = []
        for i, d in enumerate(self.destinations):
            names.append(d.name or f"destinations[{i}]")
        return names

    @property
    def verb(self) -> str:
        src = self.source
        if isinstance(src, S3SourceSpec):
            return "getfroms3"
        if any(d.type == "s3" for d in self.destinations):
            return "movetos3"
        if not self.destinations:
            return "diff" if isinstance(src, EbsSourceSpec) and src.base_snapshot_id else "list"
        kinds = {d.type for d in self.destinations}
        if isinstance(src, FileSourceSpec):
            return "upload" if len(self.destinations) == 1 else "fanout"
        if isinstance(src, EbsChainSourceSpec):
            return "sync"
        if src.base_snapshot_id:
            return "deltadownload" if kinds == {"file"} else "sync"
        if kinds == {"file"}:
            return "download" if len(self.destinations) == 1 else "multiclone"
        return "copy"


def _check_encryption(i: int, d: EbsDestinationSpec) -> None:
    """A KMS key implies encryption, so ``encrypted = false`` beside one is a contradiction;
    a child snapshot takes its parent's encryption (EBS refuses both fields with a parent)."""
    where = f"destinations[{i}]"
    if d.kms_key_arn and d.encrypted is False:
        raise PydanticCustomError(
            "shape", "encrypted = false contradicts kms_key_arn: a KMS key encrypts the "
            "snapshot (leave encrypted out, or set it true)", {"loc": f"{where}.encrypted"})
    if d.parent_snapshot_id and (d.kms_key_arn or d.encrypted is not None):
        field = "kms_key_arn" if d.kms_key_arn else "encrypted"
        raise PydanticCustomError(
            "shape", f"{field} cannot be given with parent_snapshot_id: a child snapshot "
            "takes its parent's encryption", {"loc": f"{where}.{field}"})


def _loc(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for p in loc:
        if isinstance(p, int):
            parts[-1:] = [f"{parts[-1]}[{p}]"] if parts else [f"[{p}]"]
        elif p in TYPE_NAMES and parts:  # discriminator tag, not a field
            continue
        else:
            parts.append(str(p))
    return ".".join(parts) or "(job)"


def describe_validation_error(err: ValidationError) -> BadInput:
    first = err.errors()[0]
    field = _loc(first["loc"])
    kind = first["type"]
    if kind == "shape":
        field = str((first.get("ctx") or {}).get("loc") or field)
        msg = str(first["msg"])
    elif kind == "extra_forbidden":
        msg = "unknown field"
    elif kind == "missing":
        msg = "required field is missing"
    elif kind == "union_tag_invalid" or kind == "union_tag_not_found":
        msg = f"'type' must be one of: {', '.join(TYPE_NAMES)}"
    elif kind == "string_pattern_mismatch" and field.endswith("snapshot_id"):
        msg = f"{first.get('input')!r} is not a snapshot id (snap-, then 8 or 17 hex digits)"
    elif kind == "string_pattern_mismatch" and field.endswith("region"):
        msg = f"{first.get('input')!r} is not a region name (like us-east-1)"
    else:
        msg = first["msg"]
    more = len(err.errors()) - 1
    return BadInput(msg + (f" (and {more} more problem{'s' if more > 1 else ''})"
                           if more else ""), field=field)


def from_verb(data: dict[str, Any]) -> dict[str, Any]:
    """Expand FSP-style shorthand (``verb = ...``) into a full job dict."""
    data = dict(data)
    verb = data.pop("verb")
    if verb not in VERBS:
        raise BadInput(f"unknown verb {verb!r}; one of: {', '.join(VERBS)}", field="verb")
    aws = {k: data.pop(k) for k in ("region", "profile", "endpoint_url", "role_arn",
                                     "external_id") if k in data}
    out: dict[str, Any] = {k: data.pop(k) for k in ("version", "name", "priority", "dry_run")
                           if k in data}

    def need(key: str) -> Any:
        if key not in data:
            raise BadInput(f"required for verb {verb!r}", field=key)
        return data.pop(key)

    def snapshot_options() -> dict[str, Any]:
        return {k: data.pop(k) for k in SNAPSHOT_OPTIONS if k in data}

    def dest_endpoint(region: Any) -> dict[str, Any]:
        """The destination's endpoint: its own region, and its own profile/role/endpoint
        when given (cross-account), else the source's."""
        end = {k: v for k, v in aws.items() if k not in ("region", "role_arn", "external_id")}
        for key in ("profile", "endpoint_url", "role_arn", "external_id"):
            if f"destination_{key}" in data:
                end[key] = data.pop(f"destination_{key}")
        return {**end, "region": region}

    if verb == "list":
        out["source"] = {"type": "ebs", "snapshot_id": need("snapshot_id"), **aws}
    elif verb == "diff":
        out["source"] = {"type": "ebs", "base_snapshot_id": need("first_snapshot_id"),
                         "snapshot_id": need("second_snapshot_id"), **aws}
    elif verb == "download":
        out["source"] = {"type": "ebs", "snapshot_id": need("snapshot_id"), **aws}
        out["destinations"] = [{"type": "file", "path": need("path")}]
    elif verb == "deltadownload":
        out["source"] = {"type": "ebs", "base_snapshot_id": need("first_snapshot_id"),
                         "snapshot_id": need("second_snapshot_id"), **aws}
        out["destinations"] = [{"type": "file", "path": need("path"), "mode": "in-place"}]
    elif verb == "upload":
        out["source"] = {"type": "file", "path": need("path")}
        out["destinations"] = [{"type": "ebs", **aws, **snapshot_options()}]
    elif verb in ("copy", "sync"):
        out["source"] = {"type": "ebs", "snapshot_id": need("snapshot_id"), **aws}
        # sync's C (the copy of A) is read before the snapshot options, which would take it.
        parent = {}
        if verb == "sync":
            out["source"]["base_snapshot_id"] = need("base_snapshot_id")
            parent["parent_snapshot_id"] = need("parent_snapshot_id")
        out["destinations"] = [{"type": "ebs", **dest_endpoint(need("destination_region")),
                                **snapshot_options(), **parent}]
    elif verb == "fanout":
        out["source"] = {"type": "file", "path": need("path")}
        regions = need("destination_regions")
        if not isinstance(regions, list) or not regions:
            raise BadInput("a non-empty list of regions", field="destination_regions")
        options = snapshot_options()
        out["destinations"] = [{"type": "ebs", **dest_endpoint(r), **options} for r in regions]
    elif verb == "multiclone":
        out["source"] = {"type": "ebs", "snapshot_id": need("snapshot_id"), **aws}
        paths = need("paths")
        if not isinstance(paths, list) or not paths:
            raise BadInput("a non-empty list of paths", field="paths")
        out["destinations"] = [{"type": "file", "path": p} for p in paths]
    if "on_destination_failure" in data:
        out["on_destination_failure"] = data.pop("on_destination_failure")
    if data:
        raise BadInput(f"unknown field for verb {verb!r}", field=sorted(data)[0])
    return out


# In a file destination's path of a fleet job: the name of the host that runs it
# (``[fleet] host``), so each host writes its own file (docs/fleet.md).
HOST_PLACEHOLDER = "{host}"


def host_placeholders(spec: JobSpec) -> list[str]:
    """The fields (``destinations[i].path``) whose value holds ``{host}``."""
    return [f"destinations[{i}].path" for i, d in enumerate(spec.destinations)
            if isinstance(d, FileDestinationSpec) and HOST_PLACEHOLDER in d.path]


def validate(data: Any, *, fleet: bool = False) -> JobSpec:
    """A job spec from its parsed file. ``{host}`` in a file destination's path is accepted
    only for a fleet job (``fleet``), where the host that runs it expands it."""
    if not isinstance(data, dict):
        raise BadInput("a job must be a table/object", field="(job)")
    if "verb" in data:
        data = from_verb(data)
    try:
        spec = JobSpec.model_validate(data)
    except ValidationError as exc:
        raise describe_validation_error(exc) from None
    if not fleet and (named := host_placeholders(spec)):
        raise BadInput(f"{HOST_PLACEHOLDER} is the name of the fleet host that runs the job: "
                       "it is expanded only in a fleet job (`fspd submit --fleet`)",
                       field=named[0])
    return spec


def parse(data: bytes, filename: str = "job", *, fleet: bool = False) -> JobSpec:
    """Parse a job file's bytes (TOML or JSON, picked by extension, else by content);
    ``fleet``: see :func:`validate`."""
    if len(data) > MAX_JOB_FILE_BYTES:
        raise BadInput(f"job file is {len(data)} bytes; the limit is {MAX_JOB_FILE_BYTES}",
                       field="(file)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadInput(f"job file is not UTF-8 (byte {exc.start})", field="(file)") from None
    as_json = filename.endswith(".json") or (not filename.endswith(".toml")
                                             and text.lstrip().startswith("{"))
    try:
        parsed = json.loads(text) if as_json else tomllib.loads(text)
    except (ValueError, RecursionError) as exc:
        kind = "JSON" if as_json else "TOML"
        raise BadInput(f"not valid {kind}: {exc}", field="(file)") from None
    return validate(parsed, fleet=fleet)


_NAME_SAFE = re.compile(r"[^A-Za-z0-9._-]")


def safe_name(text: str) -> str:
    return _NAME_SAFE.sub("_", text)[:128] or "job"
