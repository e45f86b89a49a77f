"""The live web view (fspd/daemon/ui.py) against a real ``fspd serve`` running jobs on the
emulator: in headless Chromium, and over its read-only TCP port."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from fspd.emulator.control import EmulatorControl
from tests.conftest import _free_port
from tests.daemon.browser import Chromium, Page, find_chromium
from tests.daemon.conftest import Daemon, _UnixHTTPConnection, download_job, wait_for, write_config

# One block in flight at 100 ms a block: ~10 blocks/s, so a 1 GiB half-full snapshot keeps
# its job running for about a minute and a half, however fast the machine.
SLOW_LATENCY_MS = 100
MARKUP = '<img src=x onerror="window.__pwned=1">'


def _config(tmp_path: Path, port: int, extra: str = "") -> Path:
    return write_config(tmp_path / "ui.toml", f"""
[transfer]
fetch_concurrency = 1
[retry]
not_found_window_s = 0.0
[daemon]
max_jobs = 1
event_interval_s = 0.2
http_listen = "127.0.0.1:{port}"
{extra}""")


def _tcp(port: int, method: str, path: str, headers: dict[str, str] | None = None,
         body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any] | str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        data = None if body is None else json.dumps(body)
        conn.request(method, path, body=data, headers=headers or {})
        resp = conn.getresponse()
        raw = resp.read().decode()
    finally:
        conn.close()
    try:
        return resp.status, json.loads(raw)
    except ValueError:
        return resp.status, raw


def _unix(sock: str, path: str, method: str = "GET", headers: dict[str, str] | None = None
          ) -> tuple[int, str, str]:
    conn = _UnixHTTPConnection(sock)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type") or "", resp.read().decode()
    finally:
        conn.close()


def _slow_job(emulator: EmulatorControl, tmp_path: Path, name: str, dest_name: str = "") -> str:
    snap = emulator.synthetic(volume_size=1, allocation="sparse", density=0.5, seed=31)
    named = f"name = {json.dumps(dest_name)}\n" if dest_name else ""
    return "\n".join([
        "[source]", 'type = "ebs"', f'snapshot_id = "{snap}"', f'endpoint_url = "{emulator.url}"',
        "[[destinations]]", 'type = "file"', f"path = {json.dumps(str(tmp_path / name))}",
        named])


def _state(daemon: Daemon, job: str) -> str:
    return daemon.job(job)["state"]


@pytest.fixture
def ui_daemon(make_daemon, tmp_path: Path) -> tuple[Daemon, int]:
    port = _free_port()
    daemon = make_daemon("--config", str(_config(tmp_path, port)), "--rescan-interval", "1")
    return daemon, port


def test_tcp_port_is_read_only_without_the_token_from_the_state_dir(
        ui_daemon: tuple[Daemon, int], emulator: EmulatorControl, tmp_path: Path) -> None:
    d, port = ui_daemon
    emulator.faults(latency_ms=SLOW_LATENCY_MS, operations=["GetSnapshotBlock"])
    job = d.submit(_slow_job(emulator, tmp_path, "slow.img"), "slow.toml")
    wait_for(lambda: _state(d, job) == "running", what="the job to run")

    status, body = _tcp(port, "GET", "/v1/status")  # reading works
    assert status == 200 and body["counts"] == {"running": 1}
    for method, path in (("POST", f"/v1/jobs/{job}/pause"), ("POST", f"/v1/jobs/{job}/cancel"),
                         ("PUT", "/v1/bandwidth")):
        status, body = _tcp(port, method, path, body={"bytes_per_s": 1})
        assert status == 403, (method, path, body)
        assert "ui-token" in body["message"]
        status, body = _tcp(port, method, path, {"Authorization": "Bearer not-the-token"},
                            body={"bytes_per_s": 1})
        assert status == 403, (method, path, body)
    assert _state(d, job) == "running"
    assert d.api("/v1/status")["bandwidth_bytes_per_s"] == 0

    token_file = d.root / "state" / "ui-token"
    assert token_file.stat().st_mode & 0o777 == 0o600
    auth = {"Authorization": f"Bearer {token_file.read_text().strip()}"}
    status, _body = _tcp(port, "POST", f"/v1/jobs/{job}/pause",
                         {**auth, "Origin": "http://attacker.example"})
    assert status == 403  # not even with the token, from another site's page
    assert _state(d, job) == "running"
    status, body = _tcp(port, "POST", f"/v1/jobs/{job}/pause", auth)
    assert status == 200 and body["state"] == "paused", body
    assert _state(d, job) == "paused"
    status, body = _tcp(port, "POST", f"/v1/jobs/{job}/cancel", auth)
    assert status == 202, body
    assert d.wait_finished(job) == "failed"
    assert "token" in d.sidecar("failed", job)["message"]  # who cancelled it, in words

    # A page elsewhere that rebinds its own name to 127.0.0.1 gets nothing.
    status, _body = _tcp(port, "GET", "/ui/api/state", {"Host": "attacker.example:80"})
    assert status == 421


def test_the_page_is_served_on_the_control_socket_and_the_port(
        ui_daemon: tuple[Daemon, int]) -> None:
    d, port = ui_daemon
    status, kind, html = _unix(d.socket, "/ui/")
    assert status == 200 and kind.startswith("text/html") and 'src="app.js"' in html
    status, kind, script = _unix(d.socket, "/ui/app.js")
    assert status == 200 and kind.startswith("text/javascript") and "EventSource" in script
    assert "innerHTML" not in script  # job strings go in as text only
    status, body = _tcp(port, "GET", "/ui/")
    assert status == 200 and isinstance(body, str) and "<svg" in body


def test_a_non_loopback_http_listen_is_refused_naming_the_field(
        make_daemon, tmp_path: Path) -> None:
    config = write_config(tmp_path / "open.toml", '[daemon]\nhttp_listen = "0.0.0.0:8485"\n')
    d = make_daemon("--config", str(config), start=False)
    result = d.cli("serve", "--config", str(config), "--spool", str(d.spool.root),
                   "--state-dir", str(d.root / "state"))
    assert result.returncode == 2, result.stderr
    assert "daemon.http_listen" in result.stderr and "loopback" in result.stderr
    assert "Traceback" not in result.stderr
    assert not Path(d.socket).exists()


def test_browsers_on_the_socket_get_no_cross_site_or_rebound_requests_through(
        ui_daemon: tuple[Daemon, int], emulator: EmulatorControl, tmp_path: Path) -> None:
    """Through ``ssh -L PORT:SOCKET`` a browser reaches the socket as the SSH user: a page
    elsewhere must not act (cross-site POST) or read (a name rebound to 127.0.0.1) there."""
    d, _port = ui_daemon
    emulator.faults(latency_ms=SLOW_LATENCY_MS, operations=["GetSnapshotBlock"])
    job = d.submit(_slow_job(emulator, tmp_path, "slow.img"), "slow.toml")
    wait_for(lambda: _state(d, job) == "running", what="the job to run")
    status, _kind, _body = _unix(d.socket, f"/v1/jobs/{job}/cancel", "POST",
                                 {"Origin": "http://attacker.example", "Host": "127.0.0.1:8485"})
    assert status == 403
    status, _kind, _body = _unix(d.socket, "/ui/api/state", "GET",
                                 {"Host": "attacker.example:8485", "Sec-Fetch-Site": "none"})
    assert status == 421
    assert _state(d, job) == "running"
    # The page's own requests, and the CLI's (no Origin, Host "fspd"), go through.
    status, _kind, _body = _unix(d.socket, f"/v1/jobs/{job}/pause", "POST",
                                 {"Origin": "http://127.0.0.1:8485", "Host": "127.0.0.1:8485",
                                  "Sec-Fetch-Site": "same-origin"})
    assert status == 200 and _state(d, job) == "paused"
    assert d.cli("resume", job).returncode == 0 and _state(d, job) == "running"

    # A page opened late still gets the job's history (kept in the daemon, bounded).
    def history() -> list[dict[str, Any]]:
        status, _kind, body = _unix(d.socket, f"/ui/api/series?job={job}")
        assert status == 200
        samples = json.loads(body)["samples"]
        return samples if len(samples) >= 3 and samples[-1]["bytes"] > samples[0]["bytes"] else []

    samples = wait_for(history, 60, "a history of samples with bytes moving")
    assert [s["t"] for s in samples] == sorted(s["t"] for s in samples)
    assert "fetch" in samples[-1]["queues"]  # the latest sample has the stages' queues


# --- in a real browser --------------------------------------------------------------------

PAGE_STATE = """JSON.stringify({
  rows: [...document.querySelectorAll('#jobs tbody tr')].map(tr => ({
    job: tr.dataset.job, state: tr.dataset.state, text: tr.innerText})),
  samples: Number(document.querySelector('#chart').dataset.samples),
  lastBytes: Number(document.querySelector('#chart').dataset.lastBytes),
  chartPath: (document.querySelector('#chart path.line') || {getAttribute: () => ''})
      .getAttribute('d'),
  title: document.getElementById('detail-title').textContent,
  queues: document.getElementById('queues').textContent,
  live: document.getElementById('live').textContent,
  host: document.getElementById('host-bps').textContent,
  images: document.images.length,
  pwned: Boolean(window.__pwned),
})"""


def _screenshot_path(tmp_path: Path) -> Path:
    """$FSPD_UI_SCREENSHOT (a file), else the test's own tmp dir (pytest keeps the last runs')."""
    return Path(os.environ.get("FSPD_UI_SCREENSHOT") or tmp_path / "fspd-web-view.png")


@pytest.mark.timeout(240)
def test_browser_shows_every_job_and_the_chart_advances(
        ui_daemon: tuple[Daemon, int], emulator: EmulatorControl, tmp_path: Path) -> None:
    binary = find_chromium()
    if binary is None:
        pytest.skip("Chromium not found: install Debian's chromium package (.ci/run does) or "
                    "set FSPD_CHROMIUM to a Chromium binary")
    d, port = ui_daemon
    # A job that completes and one that fails, before the emulator is made slow.
    small = emulator.synthetic(volume_size=1, allocation="sparse", density=0.01, seed=7)
    done = d.submit(download_job(emulator, small, tmp_path / "small.img"), "small.toml")
    assert d.wait_finished(done, 60) == "done"
    failed = d.submit(download_job(emulator, "snap-0123456789abcdef0", tmp_path / "x.img"),
                      "missing.toml")
    assert d.wait_finished(failed, 60) == "failed"
    # Then a slow one whose destination name is markup, and one queued behind it.
    emulator.faults(latency_ms=SLOW_LATENCY_MS, operations=["GetSnapshotBlock"])
    running = d.submit(_slow_job(emulator, tmp_path, "<b>slow<b>.img",
                                 MARKUP), "slow.toml")
    wait_for(lambda: _state(d, running) == "running", what="the slow job to run")
    queued = d.submit(_slow_job(emulator, tmp_path, "next.img"), "next.toml")
    wait_for(lambda: _state(d, queued) == "queued", what="the second job to queue")

    browser = Chromium(binary, tmp_path / "chromium")
    browser.start()
    try:
        shot = asyncio.run(_look(browser, port, running, {
            done: "completed", failed: "failed", running: "running", queued: "queued"},
            _screenshot_path(tmp_path)))
    finally:
        browser.stop()
    assert shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")


async def _look(browser: Chromium, port: int, running: str, expected: dict[str, str],
                shot: Path) -> Path:
    async with aiohttp.ClientSession() as session:
        page = await Page.open(browser, session)
        try:
            await page.goto(f"http://127.0.0.1:{port}/ui/#job={running}")

            async def state() -> dict[str, Any]:
                return json.loads(await page.evaluate(PAGE_STATE) or "{}")

            async def until(check: Any, what: str, within_s: float = 60.0) -> dict[str, Any]:
                deadline = asyncio.get_running_loop().time() + within_s
                while True:
                    seen = await state() if await page.evaluate("!!document.body") else {}
                    if seen and check(seen):
                        return seen
                    if asyncio.get_running_loop().time() > deadline:
                        raise AssertionError(f"timed out waiting for {what}; page: {seen}")
                    await asyncio.sleep(0.1)

            seen = await until(lambda s: {r["job"]: r["state"] for r in s.get("rows", [])}
                               == expected and s["samples"] >= 2, "every job and a chart")
            assert seen["live"] == "live"
            assert seen["title"].startswith(running)
            row = next(r for r in seen["rows"] if r["job"] == running)
            assert MARKUP in row["text"] and "snap-" in row["text"]  # shown as text
            assert MARKUP in seen["queues"]  # the write stage's name, in the SVG, as text
            assert seen["images"] == 0 and not seen["pwned"]  # never parsed as markup
            # The chart's data advance: more samples, more bytes, another line.
            first = seen
            later = await until(lambda s: s["samples"] > first["samples"]
                                and s["lastBytes"] > first["lastBytes"], "the chart to advance")
            assert later["chartPath"] != first["chartPath"] and later["chartPath"]
            return await page.screenshot(shot)
        finally:
            await page.close()
