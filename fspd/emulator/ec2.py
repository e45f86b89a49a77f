"""EC2 query-protocol calls: DescribeSnapshots, DescribeRegions, DeleteSnapshot (XML)."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Mapping
from xml.sax.saxutils import escape

from aiohttp import web

from fspd.emulator.errors import ApiError
from fspd.emulator.state import Ctx, State, valid_snapshot_id
from fspd.emulator.store import Snapshot

XMLNS = "http://ec2.amazonaws.com/doc/2016-11-15/"


def _xml(action: str, inner: str) -> web.Response:
    body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<{action}Response xmlns="{XMLNS}">'
            f"<requestId>{uuid.uuid4()}</requestId>{inner}</{action}Response>")
    return web.Response(body=body.encode(), content_type="text/xml", charset="UTF-8")


def error_response(err: ApiError) -> web.Response:
    body = ('<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error>'
            f"<Code>{escape(err.code)}</Code><Message>{escape(err.message)}</Message>"
            f"</Error></Errors><RequestID>{uuid.uuid4()}</RequestID></Response>")
    return web.Response(body=body.encode(), status=err.status, content_type="text/xml",
                        charset="UTF-8")


def _list(form: Mapping[str, str], prefix: str) -> list[str]:
    """Values of ``Prefix.1``, ``Prefix.2``, ... in index order."""
    pat = re.compile(re.escape(prefix) + r"\.(\d+)$")
    found = sorted((int(m.group(1)), v) for k, v in form.items() if (m := pat.match(k)))
    return [v for _, v in found]


def _filters(form: Mapping[str, str]) -> list[tuple[str, list[str]]]:
    out = []
    for n in sorted({int(m.group(1)) for k in form
                     if (m := re.match(r"Filter\.(\d+)\.Name$", k))}):
        out.append((form[f"Filter.{n}.Name"], _list(form, f"Filter.{n}.Value")))
    return out


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts * 1000) % 1000:03d}Z"


def _item(snap: Snapshot) -> str:
    parts = [
        f"<snapshotId>{snap.id}</snapshotId>",
        f"<volumeId>{snap.volume_id}</volumeId>",
        f"<status>{snap.status()}</status>",
        f"<startTime>{_iso(snap.start_time)}</startTime>",
        f"<progress>{snap.progress_pct()}%</progress>",
        f"<ownerId>{snap.owner_id}</ownerId>",
        f"<volumeSize>{snap.volume_size}</volumeSize>",
        f"<description>{escape(snap.description or '')}</description>",
        f"<encrypted>{'true' if snap.encrypted else 'false'}</encrypted>",
    ]
    if snap.kms_key_arn:
        parts.append(f"<kmsKeyId>{escape(snap.kms_key_arn)}</kmsKeyId>")
    parts.append("<storageTier>standard</storageTier>")
    if snap.tags:
        tags = "".join(f"<item><key>{escape(t['Key'])}</key><value>{escape(t['Value'])}"
                       "</value></item>" for t in snap.tags)
        parts.append(f"<tagSet>{tags}</tagSet>")
    return "<item>" + "".join(parts) + "</item>"


def _matches(snap: Snapshot, name: str, values: list[str]) -> bool:
    if name == "snapshot-id":
        return snap.id in values
    if name == "status":
        return snap.status() in values
    if name == "owner-id":
        return snap.owner_id in values
    if name == "volume-size":
        return str(snap.volume_size) in values
    if name == "encrypted":
        return ("true" if snap.encrypted else "false") in values
    if name == "description":
        return (snap.description or "") in values
    if name == "volume-id":
        return snap.volume_id in values
    if name.startswith("tag:"):
        key = name[4:]
        return any(t["Key"] == key and t["Value"] in values for t in snap.tags)
    if name == "tag-key":
        return any(t["Key"] in values for t in snap.tags)
    raise ApiError(400, "InvalidParameterValue", f"The filter '{name}' is invalid")


def describe_snapshots(state: State, ctx: Ctx, form: Mapping[str, str]) -> web.Response:
    ids = _list(form, "SnapshotId")
    owners = _list(form, "Owner") + _list(form, "OwnerId")
    for sid in ids:
        if not valid_snapshot_id(sid):
            raise ApiError(400, "InvalidSnapshotID.Malformed", f'Invalid id: "{sid}"')
    visible = [s for s in state.store.all(ctx.region) if s.owner_id == ctx.account]
    if ids:
        by_id = {s.id: s for s in visible}
        missing = [sid for sid in ids if sid not in by_id]
        if missing:
            raise ApiError(400, "InvalidSnapshot.NotFound",
                           f"The snapshot '{missing[0]}' does not exist.")
        visible = [by_id[sid] for sid in dict.fromkeys(ids)]
    if owners:
        wanted = {ctx.account if o == "self" else o for o in owners}
        visible = [s for s in visible if s.owner_id in wanted]
    for name, values in _filters(form):
        visible = [s for s in visible if _matches(s, name, values)]
    page, next_token = _paginate(state, ctx, form, visible)
    items = "".join(_item(s) for s in page)
    more = f"<nextToken>{next_token}</nextToken>" if next_token else ""
    return _xml("DescribeSnapshots", f"<snapshotSet>{items}</snapshotSet>{more}")


def _paginate(state: State, ctx: Ctx, form: Mapping[str, str], snaps: list[Snapshot]
              ) -> tuple[list[Snapshot], str | None]:
    """EC2's MaxResults (5-1000; not allowed with SnapshotId) and NextToken paging, in a
    stable order (by id); the token is an HMAC-bound offset, like the EBS page tokens."""
    if "MaxResults" not in form and "NextToken" not in form:
        return snaps, None
    if form.get("SnapshotId.1") and "MaxResults" in form:
        raise ApiError(400, "InvalidParameterCombination",
                       "The parameter snapshotSet cannot be used with the parameter maxResults")
    try:
        limit = int(form.get("MaxResults", "1000"))
    except ValueError:
        raise ApiError(400, "InvalidParameterValue", "MaxResults must be a number") from None
    if not 5 <= limit <= 1000:
        raise ApiError(400, "InvalidParameterValue",
                       f"Value ({limit}) for parameter maxResults is invalid. "
                       "Expecting a value between 5 and 1000.")
    binding = f"ec2-describe-snapshots:{ctx.region}:{ctx.account}".encode()
    start = 0
    if form.get("NextToken"):
        value = state.tokens.check(binding, form["NextToken"])
        if value is None:
            raise ApiError(400, "InvalidNextToken", "The specified token is invalid.")
        start = value
    ordered = sorted(snaps, key=lambda s: s.id)
    page = ordered[start:start + limit]
    if start + limit < len(ordered):
        return page, state.tokens.make(binding, start + limit,
                                       time.time() + state.config["page_token_ttl"])
    return page, None


def describe_regions(state: State, ctx: Ctx, form: Mapping[str, str]) -> web.Response:
    regions = list(state.config["regions"])
    names = _list(form, "RegionName")
    for name in names:
        if name not in regions:
            raise ApiError(400, "InvalidParameterValue", f"Invalid region: {name}")
    if names:
        regions = [r for r in regions if r in names]
    for fname, values in _filters(form):
        if fname == "region-name":
            regions = [r for r in regions if r in values]
        elif fname == "opt-in-status":
            regions = [r for r in regions if "opt-in-not-required" in values]
        elif fname != "endpoint":
            raise ApiError(400, "InvalidParameterValue", f"The filter '{fname}' is invalid")
    items = "".join(
        f"<item><regionName>{r}</regionName><regionEndpoint>ec2.{r}.amazonaws.com"
        "</regionEndpoint><optInStatus>opt-in-not-required</optInStatus></item>"
        for r in regions)
    return _xml("DescribeRegions", f"<regionInfo>{items}</regionInfo>")


def delete_snapshot(state: State, ctx: Ctx, form: Mapping[str, str]) -> web.Response:
    sid = form.get("SnapshotId")
    if not sid:
        raise ApiError(400, "MissingParameter",
                       "The request must contain the parameter snapshotId")
    if not valid_snapshot_id(sid):
        raise ApiError(400, "InvalidSnapshotID.Malformed", f'Invalid id: "{sid}"')
    snap = state.store.get(ctx.region, sid)
    if snap is None or snap.owner_id != ctx.account:
        raise ApiError(400, "InvalidSnapshot.NotFound", f"The snapshot '{sid}' does not exist.")
    state.store.delete(snap)
    return _xml("DeleteSnapshot", "<return>true</return>")


HANDLERS = {
    "DescribeSnapshots": describe_snapshots,
    "DescribeRegions": describe_regions,
    "DeleteSnapshot": delete_snapshot,
}
