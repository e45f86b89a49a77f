"""moto's server for the fleet benchmark, counting the requests it answers:
``python -m tests.bench.fleet_moto PORT``.

The fleet tests' server (DynamoDB serialized, tests/fleet/atomic_moto.py) wrapped in a WSGI
middleware that counts each request by service (from the SigV4 credential scope) and
operation (``X-Amz-Target`` for DynamoDB and SQS; for S3 the method, with GET on a bucket
counted as LIST). ``GET /fspd-bench/counts`` returns ``{"service operation": n}``;
``POST /fspd-bench/reset`` zeroes them. moto keeps no request log of its own that is cheap to
read, and a count taken at the server sees every client (daemons, workers, the CLI) alike.
"""

from __future__ import annotations

import json
import re
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from moto.server import MotoRequestHandler
from werkzeug.serving import run_simple

from tests.fleet.atomic_moto import serialized_dynamodb

COUNTS_PATH, RESET_PATH = "/fspd-bench/counts", "/fspd-bench/reset"
_SCOPE = re.compile(r"Credential=[^/]+/\d{8}/[^/]+/([a-z0-9-]+)/aws4_request")


def classify(environ: dict[str, Any]) -> str | None:
    """``"dynamodb UpdateItem"``, ``"sqs ReceiveMessage"``, ``"s3 PUT"``…; None for moto's
    own API and unsigned requests."""
    match = _SCOPE.search(environ.get("HTTP_AUTHORIZATION", ""))
    if match is None:
        return None
    service = match.group(1)
    target = environ.get("HTTP_X_AMZ_TARGET", "")
    if target:
        return f"{service} {target.rpartition('.')[2]}"
    method = environ.get("REQUEST_METHOD", "GET")
    if service == "s3":
        key = environ.get("PATH_INFO", "/").lstrip("/").partition("/")[2]
        return f"s3 {'LIST' if method == 'GET' and not key else method}"
    return f"{service} {method}"


def counting(app: Callable[..., Iterable[bytes]]) -> Callable[..., Iterable[bytes]]:
    counts: Counter[str] = Counter()
    lock = threading.Lock()

    def wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path in (COUNTS_PATH, RESET_PATH):
            with lock:
                if path == RESET_PATH:
                    counts.clear()
                body = json.dumps(dict(counts)).encode()
            start_response("200 OK", [("Content-Type", "application/json"),
                                      ("Content-Length", str(len(body)))])
            return [body]
        name = classify(environ)
        if name is not None:
            with lock:
                counts[name] += 1
        return app(environ, start_response)

    return wsgi


if __name__ == "__main__":
    app = counting(serialized_dynamodb(DomainDispatcherApplication(create_backend_app)))
    run_simple("127.0.0.1", int(sys.argv[1]), app, threaded=True,
               request_handler=MotoRequestHandler)
