"""HMAC-signed block tokens and page tokens.

A token is ``base64(expiry_ms:u64 | value:u64 | mac[:16])``; the MAC covers what the token is
bound to (kind, region, snapshot ids, block index), which therefore need not be inside it.
The key is random per server process and per reset, so old tokens die with a reset.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
import struct
import time

_PACK = struct.Struct(">QQ")


class TokenSigner:
    def __init__(self) -> None:
        self.key = os.urandom(32)

    def _mac(self, binding: bytes, expiry: int, value: int) -> bytes:
        return hmac.digest(self.key, binding + _PACK.pack(expiry, value), "sha256")[:16]

    def make(self, binding: bytes, value: int, expiry: float) -> str:
        """A token valid until ``expiry`` (epoch seconds), kept to the millisecond so that
        short test lifetimes (a fraction of a second) behave."""
        expiry_ms = int(expiry * 1000)
        raw = _PACK.pack(expiry_ms, value) + self._mac(binding, expiry_ms, value)
        return base64.b64encode(raw).decode()

    def check(self, binding: bytes, token: str, now: float | None = None) -> int | None:
        """The value inside a valid, unexpired token bound to ``binding``; else None."""
        try:
            raw = base64.b64decode(token, validate=True)
        except (binascii.Error, ValueError):
            return None
        if len(raw) != 32:
            return None
        expiry, value = _PACK.unpack_from(raw)
        if not hmac.compare_digest(raw[16:], self._mac(binding, expiry, value)):
            return None
        if expiry / 1000 < (time.time() if now is None else now):
            return None
        return value


def block_binding(region: str, snapshot_id: str) -> bytes:
    return f"B|{region}|{snapshot_id}".encode()


def page_binding(region: str, op: str, second: str, first: str | None) -> bytes:
    return f"P|{region}|{op}|{second}|{first or ''}".encode()
