"""moto's server with DynamoDB requests serialized: ``python -m tests.fleet.atomic_moto PORT``.

DynamoDB applies the writes to one item one at a time, so a conditional update's check and
write are atomic; moto's threaded server checks and writes without a lock, and two concurrent
claims of one job can both pass (seen: 3 runs in 8). SQS and S3 requests (long polls among
them) stay concurrent."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from moto.server import MotoRequestHandler
from werkzeug.serving import run_simple


def serialized_dynamodb(app: Callable[..., Iterable[bytes]]) -> Callable[..., Iterable[bytes]]:
    lock = threading.Lock()

    def wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("HTTP_X_AMZ_TARGET", "").startswith("DynamoDB_"):
            with lock:
                return list(app(environ, start_response))
        return app(environ, start_response)

    return wsgi


if __name__ == "__main__":
    app = serialized_dynamodb(DomainDispatcherApplication(create_backend_app))
    run_simple("127.0.0.1", int(sys.argv[1]), app, threaded=True,
               request_handler=MotoRequestHandler)
