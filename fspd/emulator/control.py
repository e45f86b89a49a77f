"""Client side of the emulator, stdlib only: start it as a process, drive its control API.

Usable from tests, benchmarks and demos without an event loop.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

START_TIMEOUT = 20.0


class EmulatorError(RuntimeError):
    """The emulator refused a control request, or could not be started."""


class EmulatorProcess:
    """``fspd emulator`` in a child process on a free port.

    With ``tls``, it serves HTTPS and ``ca_bundle`` is the PEM file a client must trust
    (``AWS_CA_BUNDLE``; ``EmulatorControl(url, ca_bundle=...)``)."""

    def __init__(self, data_dir: Path | None = None, args: Sequence[str] = (),
                 env: Mapping[str, str] | None = None, tls: bool = False) -> None:
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir) if data_dir is not None else Path(
            tempfile.mkdtemp(prefix="fspd-emulator-"))
        self.ca_bundle = (self.data_dir / "ca.pem").absolute() if tls else None
        self.args = list(args)
        if self.ca_bundle is not None:
            self.args += ["--tls", "--cert-out", str(self.ca_bundle)]
        self.env = dict(env) if env is not None else None
        self.url: str | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.data_dir / "emulator.log"

    def _tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def start(self) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        ready = self.data_dir / f"ready-{os.getpid()}-{time.monotonic_ns()}"
        cmd = [sys.executable, "-m", "fspd", "emulator", "--port", "0", "--ready-file",
               str(ready), "--data-dir", str(self.data_dir / "store"), *self.args]
        env = dict(os.environ if self.env is None else self.env)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                         stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT
        while not ready.exists():
            if self.proc.poll() is not None:
                raise EmulatorError(f"emulator exited with {self.proc.returncode}:\n"
                                    f"{self._tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise EmulatorError(f"emulator not ready after {START_TIMEOUT:.0f}s:\n"
                                    f"{self._tail()}")
            time.sleep(0.02)
        self.url = ready.read_text().strip()
        ready.unlink(missing_ok=True)
        return self.url

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> EmulatorProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class EmulatorControl:
    """The emulator's ``/_emulator/`` API."""

    def __init__(self, url: str, timeout: float = 30.0,
                 ca_bundle: str | Path | None = None) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._ssl = ssl.create_default_context(cafile=str(ca_bundle)) if ca_bundle else None

    def _call(self, method: str, path: str, body: Any = None,
              query: Mapping[str, Any] | None = None, raw: bool = False) -> Any:
        url = f"{self.url}/_emulator/{path}"
        if query:
            url += "?" + urllib.parse.urlencode({k: v for k, v in query.items()
                                                 if v is not None})
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout,
                                        context=self._ssl) as resp:
                payload = resp.read()
        except urllib.error.HTTPError as exc:
            text = exc.read().decode(errors="replace")
            try:
                message = json.loads(text).get("error", text)
            except ValueError:
                message = text
            raise EmulatorError(f"{method} /_emulator/{path}: {exc.code}: {message}") from None
        return payload if raw else json.loads(payload)

    def reset(self) -> None:
        self._call("POST", "reset")

    def config(self, **changes: Any) -> dict[str, Any]:
        if not changes:
            return self._call("GET", "config")
        return self._call("PATCH", "config", changes)

    def faults(self, **settings: Any) -> dict[str, Any]:
        if not settings:
            return self._call("GET", "faults")
        return self._call("PUT", "faults", settings)

    def clear_faults(self) -> None:
        self._call("DELETE", "faults")

    def synthetic(self, **spec: Any) -> str:
        return str(self._call("POST", "synthetic", spec)["SnapshotId"])

    def snapshots(self, region: str | None = None) -> list[dict[str, Any]]:
        return self._call("GET", "snapshots", query={"region": region})

    def image(self, snapshot_id: str, region: str = "us-east-1", offset: int = 0,
              length: int | None = None) -> bytes:
        return self._call("GET", f"snapshots/{snapshot_id}/image", raw=True,
                          query={"region": region, "offset": offset, "length": length})

    def stats(self) -> dict[str, Any]:
        return self._call("GET", "stats")

    def reset_stats(self) -> None:
        self._call("POST", "stats/reset")
