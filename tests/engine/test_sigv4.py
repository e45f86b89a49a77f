"""fspd's hot-path SigV4 signer produces exactly botocore's signature for the same request."""

from __future__ import annotations

import datetime as dt
from urllib.parse import quote, urlencode

import pytest
from botocore import auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from fspd.sigv4 import Signer

NOW = dt.datetime(2026, 11, 26, 4, 5, 6, tzinfo=dt.UTC)


def _botocore(monkeypatch: pytest.MonkeyPatch, method: str, url: str,
              headers: dict[str, str], creds: Credentials) -> dict[str, str]:
    monkeypatch.setattr(auth, "get_current_datetime", lambda: NOW.replace(tzinfo=None))
    request = AWSRequest(method=method, url=url, headers=headers)
    auth.SigV4Auth(creds, "ebs", "eu-west-1").add_auth(request)
    return dict(request.headers.items())


@pytest.mark.parametrize("token", [None, "FwoGZXIvYXdzEJr//session+token=="])
@pytest.mark.parametrize("block_token", ["AAAB+/cd==", "plain", "a b&c=d%e"])
def test_get_signature_equals_botocores(monkeypatch: pytest.MonkeyPatch, token: str | None,
                                        block_token: str) -> None:
    creds = Credentials("AKIAEXAMPLE000000001", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
                        token)
    path = "/snapshots/snap-0123456789abcdef0/blocks/42"
    url = f"http://127.0.0.1:8484{path}?{urlencode({'blockToken': block_token}, quote_via=quote)}"
    headers = {"X-Amz-Content-SHA256": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495"
                                       "991b7852b855"}
    expected = _botocore(monkeypatch, "GET", url, headers, creds)
    ours = Signer("eu-west-1", "ebs").sign("GET", "127.0.0.1:8484", path,
                                           {"blockToken": block_token}, headers,
                                           creds.access_key, creds.secret_key, token, now=NOW)
    assert ours["Authorization"] == expected["Authorization"]
    assert ours["X-Amz-Date"] == expected["X-Amz-Date"]


def test_put_signature_with_checksum_headers_equals_botocores(
        monkeypatch: pytest.MonkeyPatch) -> None:
    creds = Credentials("AKIAEXAMPLE000000001", "secret/with+chars")
    path = "/snapshots/snap-0123456789abcdef0/blocks/7"
    headers = {"x-amz-Data-Length": "524288", "x-amz-Checksum": "B4VNL+8pega6gWheZgwzLeNtXR=",
               "x-amz-Checksum-Algorithm": "SHA256", "x-amz-Progress": "50",
               "Content-Type": "application/octet-stream",
               "X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"}
    expected = _botocore(monkeypatch, "PUT", f"https://ebs.eu-west-1.amazonaws.com{path}",
                         headers, creds)
    ours = Signer("eu-west-1", "ebs").sign("PUT", "ebs.eu-west-1.amazonaws.com", path, {},
                                           headers, creds.access_key, creds.secret_key,
                                           now=NOW)
    assert ours["Authorization"] == expected["Authorization"]


def test_signing_key_follows_the_day_and_the_secret() -> None:
    signer = Signer("us-east-1", "ebs")
    a = signer.sign("GET", "h", "/", {}, {"X-Amz-Content-SHA256": "x"}, "AK", "s1", now=NOW)
    b = signer.sign("GET", "h", "/", {}, {"X-Amz-Content-SHA256": "x"}, "AK", "s2", now=NOW)
    c = signer.sign("GET", "h", "/", {}, {"X-Amz-Content-SHA256": "x"}, "AK", "s1",
                    now=NOW + dt.timedelta(days=1))
    assert len({a["Authorization"], b["Authorization"], c["Authorization"]}) == 3
