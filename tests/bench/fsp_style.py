"""FSP's design, rebuilt only to be measured: the whole block index listed into memory first,
then a pool of threads each with its own boto3 client doing GetSnapshotBlock, verifying and
writing. (fspd does not use this; it is the "previous approach" column of the benchmark.)"""

from __future__ import annotations

import base64
import hashlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import boto3
from botocore.config import Config

THREADS = 16


def fsp_style_download(url: str, region: str, snapshot_id: str, path: str, size: int,
                       limit: int) -> None:
    local = threading.local()

    def client() -> object:
        if not hasattr(local, "ebs"):
            local.ebs = boto3.session.Session().client(
                "ebs", region_name=region, endpoint_url=url,
                config=Config(retries={"max_attempts": 3}))
        return local.ebs

    blocks = []
    token = None
    while True:
        kw = {"NextToken": token} if token else {}
        page = client().list_snapshot_blocks(SnapshotId=snapshot_id, MaxResults=10000, **kw)
        blocks += page["Blocks"]
        token = page.get("NextToken")
        if not token:
            break
    blocks = blocks[:limit]
    fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_TRUNC, 0o600)
    os.ftruncate(fd, size)

    def one(block: dict[str, object]) -> None:
        resp = client().get_snapshot_block(SnapshotId=snapshot_id,
                                           BlockIndex=block["BlockIndex"],
                                           BlockToken=block["BlockToken"])
        data = resp["BlockData"].read()
        if base64.b64encode(hashlib.sha256(data).digest()).decode() != resp["Checksum"]:
            raise RuntimeError("corrupt block")
        os.pwrite(fd, data, int(block["BlockIndex"]) * len(data))

    try:
        with ThreadPoolExecutor(THREADS) as pool:
            list(pool.map(one, blocks))
    finally:
        os.close(fd)
