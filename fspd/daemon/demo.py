"""``fspd demo``: the daemon end to end on the bundled emulator, with checked results.

Starts the emulator (as AWS) and ``fspd serve`` as child processes with spool, socket and state
in one local directory, submits the example jobs of ``config/examples`` through the same code as
``fspd submit``, follows them on the control socket, then compares bytes: the download with the
snapshot, the uploaded snapshot with the file, the copy with its source.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import signal
import string
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from fspd import loop
from fspd.blocks import BLOCK_SIZE
from fspd.daemon import view
from fspd.daemon.client import Client, DaemonUnavailable
from fspd.daemon.scheduler import TERMINAL
from fspd.daemon.spool import Spool
from fspd.display import human_bytes
from fspd.emulator.control import EmulatorControl, EmulatorProcess
from fspd.errors import BadInput

MARKER = ".fspd-demo"
PIECE = 64 << 20
IMAGE_BYTES = 24 << 20
DEMO_ENV = {  # the emulator accepts any key; these keep a user's real AWS setup out of it
    "AWS_ACCESS_KEY_ID": "AKIAFSPDDEMO00000001",
    "AWS_SECRET_ACCESS_KEY": "fspd-demo-secret-not-real",
    "AWS_DEFAULT_REGION": "us-east-1",
}
EXAMPLES = ("download.toml", "upload.toml", "copy-region.toml")


def default_examples() -> Path:
    return Path(__file__).resolve().parents[2] / "config" / "examples"


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def prepare_dir(root: Path) -> None:
    """A fresh demo directory; only ever wipes one that an earlier demo made."""
    if root.exists() and any(root.iterdir()):
        if not (root / MARKER).exists():
            raise BadInput(f"{root} exists and was not made by `fspd demo`; pick another "
                           "--dir", field="--dir")
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / MARKER).write_text("made by fspd demo; removed by the next demo run\n")


def make_image(path: Path) -> None:
    """A small image: data, a hole, zeros written out, data at the end (not block aligned)."""
    rng = hashlib.shake_256(b"fspd demo image")
    data = bytearray(IMAGE_BYTES - 12345)
    data[:4 << 20] = rng.digest(4 << 20)
    data[16 << 20:(16 << 20) + 3 * BLOCK_SIZE + 100] = rng.digest(3 * BLOCK_SIZE + 100)[::-1]
    data[-(1 << 20):] = hashlib.shake_256(b"tail").digest(1 << 20)
    path.write_bytes(bytes(data))


def _pieces(total: int) -> Iterator[tuple[int, int]]:
    for offset in range(0, total, PIECE):
        yield offset, min(PIECE, total - offset)


def _first_difference(a: bytes, b: bytes, offset: int) -> str | None:
    if a == b:
        return None
    at = next((i for i in range(min(len(a), len(b))) if a[i] != b[i]), min(len(a), len(b)))
    return f"differ at byte {offset + at}"


def _file_reader(path: Path, size: int) -> Callable[[int, int], bytes]:
    def read(offset: int, length: int) -> bytes:
        with path.open("rb") as f:
            f.seek(offset)
            data = f.read(length)
        end = min(offset + length, size)
        return data + bytes(max(0, end - offset - len(data))) + bytes(
            max(0, offset + length - max(size, offset)))
    return read


class Demo:
    def __init__(self, root: Path, examples: Path, log_json: bool | None) -> None:
        self.root = root.absolute()
        self.examples = examples
        self.log_json = log_json
        self.socket = self.root / "fspd.sock"
        self.spool = Spool(self.root / "spool")
        self.env = {**os.environ, **DEMO_ENV,
                    "AWS_CONFIG_FILE": str(self.root / "aws-config"),
                    "AWS_SHARED_CREDENTIALS_FILE": str(self.root / "aws-credentials")}
        for key in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN", "FSPD_CONFIG"):
            self.env.pop(key, None)
        self.serve: subprocess.Popen[bytes] | None = None

    def run(self) -> int:
        prepare_dir(self.root)
        _say(f"fspd demo in {self.root}")
        with EmulatorProcess(data_dir=self.root / "emulator", env=self.env) as emu:
            assert emu.url is not None
            control = EmulatorControl(emu.url)
            source = control.synthetic(volume_size=1, allocation="sparse", density=0.05,
                                       seed=6, description="fspd demo source")
            image = self.root / "data" / "local.img"
            image.parent.mkdir()
            make_image(image)
            _say(f"emulator at {emu.url}; source snapshot {source} (1 GiB, sparse); "
                 f"local image {image} ({human_bytes(image.stat().st_size)})")
            values = {"endpoint_url": emu.url, "source_snapshot_id": source,
                      "image_path": str(image),
                      "download_path": str(self.root / "data" / "download.img")}
            try:
                self._start_serve(emu.url)
                names = self._submit(values)
                records = loop.run(self._follow(names))
            finally:
                self._stop_serve()
            return self._check(control, source, image, values, records)

    def _start_serve(self, endpoint_url: str) -> None:
        # The demo's jobs name the emulator in endpoint_url: its settings allow exactly it.
        config = self.root / "fspd.toml"
        config.write_text(f"[aws]\nallow_endpoints = [{json.dumps(endpoint_url)}]\n")
        cmd = [sys.executable, "-m", "fspd", "--log-json", "serve", "--config", str(config),
               "--spool", str(self.spool.root), "--state-dir", str(self.root / "state"),
               "--socket", str(self.socket), "--max-jobs", "2"]
        with (self.root / "serve.log").open("ab") as log:
            self.serve = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                          env=self.env, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 60  # its worker processes start first
        while True:
            try:
                loop.run(self._status())
                break
            except DaemonUnavailable:
                if self.serve.poll() is not None or time.monotonic() > deadline:
                    tail = (self.root / "serve.log").read_text(errors="replace")[-2000:]
                    raise BadInput(f"fspd serve did not start:\n{tail}", field="demo") from None
                time.sleep(0.1)
        _say(f"fspd serve running (pid {self.serve.pid}), socket {self.socket}")

    async def _status(self) -> dict[str, Any]:
        async with Client(str(self.socket)) as client:
            return await client.call("GET", "/v1/status")

    def _submit(self, values: dict[str, str]) -> dict[str, str]:
        names = {}
        for example in EXAMPLES:
            path = self.examples / example
            try:
                text = path.read_text(encoding="utf-8")
            except OSError as exc:
                raise BadInput(f"cannot read example {path}: {exc.strerror} (use --examples)",
                               field="--examples") from None
            try:
                job = string.Template(text).substitute(values).encode()
            except (KeyError, ValueError) as exc:
                raise BadInput(f"example {path} has a bad placeholder: {exc}",
                               field="--examples") from None
            names[example.removesuffix(".toml")] = self.spool.submit(job, example)
            _say(f"submitted {example} as {names[example.removesuffix('.toml')]}")
        return names

    async def _follow(self, names: dict[str, str]) -> dict[str, dict[str, Any]]:
        pending = set(names.values())
        bars = view.Bars() if sys.stderr.isatty() else None
        seen: dict[str, str] = {}
        try:
            async with Client(str(self.socket)) as client:
                async with asyncio.timeout(300):
                    async for event in client.events():
                        job, state = event.get("job"), event.get("state")
                        if job not in pending or state is None:
                            continue
                        if bars is not None:
                            bars.update(event)
                        elif seen.get(job) != state:
                            _say(f"  {job}: {state}")
                        seen[job] = state
                        if state in TERMINAL:
                            pending.discard(job)
                            if not pending:
                                break
                return {kind: await client.call("GET", f"/v1/jobs/{name}")
                        for kind, name in names.items()}
        finally:
            if bars is not None:
                bars.close()

    def _stop_serve(self) -> None:
        proc, self.serve = self.serve, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def _check(self, control: EmulatorControl, source: str, image: Path,
               values: dict[str, str], records: dict[str, dict[str, Any]]) -> int:
        size = 1 << 30
        checks: list[tuple[str, str | None]] = []

        def snapshot_of(kind: str) -> str | None:
            dests = (records[kind].get("result") or {}).get("destinations") or []
            return dests[0].get("snapshot_id") if dests else None

        def src(offset: int, length: int) -> bytes:
            return control.image(source, offset=offset, length=length)

        for kind, rec in records.items():
            if rec["state"] != "completed":
                checks.append((f"{kind} finished", f"{rec['state']}: "
                               f"{(rec.get('error') or {}).get('message')}"))
        # One pass over the volume; each piece of the source is fetched once for two checks.
        compare: list[tuple[str, Callable[[int, int], bytes], Callable[[int, int], bytes]]] = []
        if records["download"]["state"] == "completed":
            download = Path(values["download_path"])
            compare.append(("download equals the source snapshot",
                            _file_reader(download, download.stat().st_size), src))
        if (up := snapshot_of("upload")) is not None:
            compare.append((f"uploaded {up} equals {image.name}",
                            _file_reader(image, image.stat().st_size),
                            lambda o, n: control.image(up, offset=o, length=n)))
        if (copy := snapshot_of("copy-region")) is not None:
            compare.append((f"copy {copy} in us-west-2 equals the source",
                            lambda o, n: control.image(copy, region="us-west-2", offset=o,
                                                       length=n), src))
        problems: dict[str, str | None] = {name: None for name, _, _ in compare}
        for offset, length in _pieces(size):
            source_piece = src(offset, length)
            for name, left, right in compare:
                if problems[name] is None:
                    a = left(offset, length)
                    b = source_piece if right is src else right(offset, length)
                    problems[name] = _first_difference(a, b, offset)
        checks += list(problems.items())
        _say("\nfspd demo report")
        for kind, rec in records.items():
            result = rec.get("result") or {}
            _say(f"  {kind:<12} {rec['state']:<10} {result.get('blocks_done', 0)} blocks, "
                 f"{human_bytes(result.get('bytes_done', 0))} in "
                 f"{result.get('duration_s', 0):.2f} s -> "
                 + ", ".join(str(d.get("snapshot_id") or d.get("path"))
                             for d in result.get("destinations", [])))
        for name, problem in checks:
            _say(f"  [{'ok' if problem is None else 'FAILED'}] {name}"
                 + ("" if problem is None else f": {problem}"))
        ok = bool(checks) and all(problem is None for _, problem in checks)
        _say(f"\n{'all checks passed' if ok else 'some checks FAILED'}; spool, logs and "
             f"images are in {self.root}")
        return 0 if ok else 4


def run_demo(root: Path, *, examples: Path | None = None, log_json: bool | None = None) -> int:
    return Demo(root, examples or default_examples(), log_json).run()
