"""Which endpoint_url values a job may name (issue 12, item 2): AWS's own for the partition,
or the operator's allow-list; look-alikes are not fooled into matching."""

from __future__ import annotations

import pytest

from fspd.endpoint_policy import allowed, exact_pattern, parse_pattern

OPERATOR = [parse_pattern("http://127.0.0.1:*"), parse_pattern("https://*.storage.example"),
            parse_pattern("https://s3.example.com")]


@pytest.mark.parametrize(("url", "region"), [
    ("https://ebs.us-east-1.amazonaws.com", "us-east-1"),
    ("https://ec2.eu-west-1.amazonaws.com/", "eu-west-1"),
    ("https://ebs.cn-north-1.amazonaws.com.cn", "cn-north-1"),
    ("http://127.0.0.1:8484", "us-east-1"),
    ("https://eu.storage.example", "us-east-1"),
    ("https://S3.Example.com:443", "us-east-1"),
])
def test_allowed(url: str, region: str) -> None:
    assert allowed(url, region, OPERATOR)


@pytest.mark.parametrize(("url", "region"), [
    ("http://ebs.us-east-1.amazonaws.com", "us-east-1"),  # not TLS
    ("https://ebs.us-east-1.amazonaws.com:8443", "us-east-1"),
    ("https://ebs.cn-north-1.amazonaws.com.cn", "us-east-1"),  # another partition
    ("https://ebs.us-east-1.amazonaws.com", "cn-north-1"),
    ("https://amazonaws.com.evil.example", "us-east-1"),
    ("https://evil.example/.amazonaws.com", "us-east-1"),
    ("https://evil.example#.amazonaws.com", "us-east-1"),
    ("https://evil.example?.amazonaws.com", "us-east-1"),
    ("https://ebs.us-east-1.amazonaws.com@evil.example", "us-east-1"),
    ("https://evil.example\\.amazonaws.com", "us-east-1"),
    ("https://ebs.us-east-1.amazonaws.com.", "us-east-1"),
    ("http://127.0.0.2:8484", "us-east-1"),
    ("https://storage.example", "us-east-1"),  # "*." needs a label before it
    ("https://s3.example.com:8443", "us-east-1"),
    ("ftp://s3.example.com", "us-east-1"),
])
def test_refused(url: str, region: str) -> None:
    assert not allowed(url, region, OPERATOR)


def test_an_endpoint_given_on_the_command_line_is_allowed_exactly() -> None:
    pattern = exact_pattern("http://127.0.0.1:8484/")
    assert pattern == "http://127.0.0.1:8484"
    assert allowed("http://127.0.0.1:8484", "us-east-1", [parse_pattern(pattern)])
    assert not allowed("http://127.0.0.1:8485", "us-east-1", [parse_pattern(pattern)])


@pytest.mark.parametrize("entry", ["https://example.com/path", "example.com", "https://",
                                   "https://a.*.example", "https://user@example.com"])
def test_a_malformed_allow_list_entry_is_refused(entry: str) -> None:
    with pytest.raises(ValueError, match="not an endpoint"):
        parse_pattern(entry)
