"""moto's server with DynamoDB requests serialized: ``python -m tests.fleet.atomic_moto PORT``.

DynamoDB applies the writes to one item one at a time, so a conditional update's check and
write are atomic; moto's threaded server checks and writes without a lock, and two concurrent
claims of one job can both pass (seen: 3 runs in 8). SQS and S3 requests (long polls among
them) stay concurrent.

For the take-over tests it also holds S3 UploadPart requests past the first N, unanswered
until released (as the emulator's ``hold_after`` fault does for EBS): ``POST /_fspd/hold/N``
and ``DELETE /_fspd/hold`` (see :class:`PartHold`)."""

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


HOLD_PATH = "/_fspd/hold"


class PartHold:
    """Holds S3 UploadPart requests past the first ``after`` (counted since the hold was
    set), so a test stops a multipart upload at a known part; released by the DELETE."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app, self.lock = app, threading.Lock()
        self.after: int | None = None
        self.seen = 0
        self.released = threading.Event()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]
                 ) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path.startswith(HOLD_PATH):
            with self.lock:
                if environ["REQUEST_METHOD"] == "DELETE":
                    self.after = None
                    self.released.set()
                else:
                    self.after, self.seen = int(path.rpartition("/")[2]), 0
                    self.released = threading.Event()
            start_response("204 No Content", [])
            return [b""]
        query = environ.get("QUERY_STRING", "")
        if environ["REQUEST_METHOD"] == "PUT" and "partNumber=" in query \
                and "uploadId=" in query:
            with self.lock:
                self.seen += 1
                hold = self.after is not None and self.seen > self.after
                released = self.released
            if hold:
                released.wait(300)
        return self.app(environ, start_response)


if __name__ == "__main__":
    app = PartHold(serialized_dynamodb(DomainDispatcherApplication(create_backend_app)))
    run_simple("127.0.0.1", int(sys.argv[1]), app, threaded=True,
               request_handler=MotoRequestHandler)
