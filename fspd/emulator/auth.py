"""SigV4: read the credential scope of a request and, when keys are configured, verify it.

Verification rebuilds the request as botocore saw it (signed headers only) and recomputes
the signature with botocore's own signer, so the emulator and clients agree on canonical
forms by construction.
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"

_AUTH_RE = re.compile(
    r"^AWS4-HMAC-SHA256\s+Credential=([^/,\s]+)/(\d{8})/([a-z0-9-]+)/([a-z0-9-]+)/aws4_request"
    r"\s*,\s*SignedHeaders=([a-z0-9;\-]+)\s*,\s*Signature=([0-9a-f]{64})\s*$"
)


@dataclass(frozen=True)
class Scope:
    access_key: str
    date: str
    region: str
    service: str
    signed_headers: tuple[str, ...]
    signature: str


def parse(authorization: str | None) -> Scope | None:
    """The parsed Authorization header, or None when absent or malformed."""
    if not authorization:
        return None
    m = _AUTH_RE.match(authorization.strip())
    if m is None:
        return None
    akid, date, region, service, signed, signature = m.groups()
    return Scope(akid, date, region, service, tuple(signed.split(";")), signature)


class _Signer(SigV4Auth):
    def __init__(self, credentials: Credentials, service: str, region: str, payload: str):
        super().__init__(credentials, service, region)
        self._payload = payload

    def payload(self, request: AWSRequest) -> str:
        return self._payload


def verify(scope: Scope, secret: str, method: str, raw_path_qs: str,
           headers: dict[str, str], payload_hashes: list[str]) -> bool:
    """Whether ``scope.signature`` is right for any of the candidate payload hashes."""
    amz_date = headers.get("x-amz-date")
    if not amz_date or amz_date[:8] != scope.date:
        return False
    signed = {}
    for name in scope.signed_headers:
        if name not in headers:
            return False
        signed[name] = headers[name]
    host = signed.get("host", headers.get("host", "localhost"))
    request = AWSRequest(method=method, url=f"http://{host}{raw_path_qs}", headers=signed)
    request.context["timestamp"] = amz_date
    creds = Credentials(scope.access_key, secret)
    content_hash = headers.get("x-amz-content-sha256")
    candidates = [content_hash] if content_hash else payload_hashes
    for payload in candidates:
        signer = _Signer(creds, scope.service, scope.region, payload)
        canonical = signer.canonical_request(request)
        expected = signer.signature(signer.string_to_sign(request, canonical), request)
        if hmac.compare_digest(expected, scope.signature):
            return True
    return False
