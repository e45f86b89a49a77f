"""``fspd serve``: one uvloop loop, the spool watcher, the scheduler, the control socket,
signals (SIGTERM/SIGINT stop, SIGHUP reload) and systemd notifications. The jobs run in
worker processes (fspd/daemon/pool.py); SIGTERM and a reload's settings reach each of them."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from fspd import __version__, config, log
from fspd.config import Settings
from fspd.daemon import control, ui
from fspd.daemon.access import Policy, group_id
from fspd.daemon.events import EventHub
from fspd.daemon.fleet_view import FleetView
from fspd.daemon.scheduler import Scheduler
from fspd.daemon.sdnotify import Notifier, listen_fds
from fspd.daemon.spool import Spool
from fspd.daemon.watch import DirWatcher
from fspd.display import human_bytes
from fspd.errors import BadInput

logger = log.get_logger("fspd.daemon")

# Daemon settings that a SIGHUP cannot change: they need a restart.
FIXED_KEYS = ("spool_dir", "state_dir", "socket_path", "socket_group", "http_listen",
              "workers")
TMP_CLEAN_INTERVAL_S = 3600.0


def with_overrides(settings: Settings, overrides: dict[str, Any]) -> Settings:
    """Apply command-line overrides to the daemon section (and ``log_level``)."""
    daemon = {k: v for k, v in overrides.items() if k != "log_level" and v is not None}
    update: dict[str, Any] = {}
    if daemon:
        merged = {**settings.daemon.model_dump(), **daemon}
        update["daemon"] = type(settings.daemon).model_validate(merged)
    if overrides.get("log_level"):
        update["log_level"] = overrides["log_level"]
    return settings.model_copy(update=update) if update else settings


class Service:
    def __init__(self, settings: Settings, *, config_path: str | None = None,
                 overrides: dict[str, Any] | None = None, log_json: bool | None = None,
                 notifier: Notifier | None = None) -> None:
        self.settings = settings
        self.config_path = config_path
        self.overrides = overrides or {}
        self.log_json = log_json
        self.notifier = notifier or Notifier()
        self.spool = Spool(Path(settings.daemon.spool_dir))
        self.events = EventHub()
        self.scheduler = Scheduler(settings, self.spool, self.events, self.update_status,
                                   log_json=log_json)
        self.policy = Policy.for_group(os.getuid(), settings.daemon.control_group)
        self.watcher = DirWatcher(self.spool.box("new"))
        fleet_spool = settings.fleet.spool_dir if settings.fleet is not None else None
        # [fleet] spool_dir: job files there are enqueued into the fleet (fleet_spool.py)
        self.fleet_spool = Spool(fleet_spool) if fleet_spool is not None else None
        self.fleet_view = FleetView()  # GET /v1/fleet
        self.fleet_watcher = DirWatcher(self.fleet_spool.box("new")) if self.fleet_spool \
            else None
        self.started = time.monotonic()
        self._stop = asyncio.Event()
        self._reload_requested = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._own_socket = False
        self.socket_path = str(settings.daemon.socket_path)

    # --- status --------------------------------------------------------------------------

    def summary_line(self) -> str:
        counts = self.scheduler.counts()
        rate = sum(r.progress.rates()[1] for r in self.scheduler.running())
        limit = self.scheduler.bandwidth.rate
        text = (f"{counts['running']} running, {counts['paused']} paused, "
                f"{counts['queued']} queued, "
                f"{counts['completed']} done, {counts['failed'] + counts['cancelled']} failed; "
                f"{human_bytes(rate)}/s")
        if limit:
            text += f" (limit {human_bytes(limit)}/s)"
        return text

    def update_status(self) -> None:
        self.notifier.status(self.summary_line())

    def status(self) -> dict[str, Any]:
        s = self.settings.daemon
        return {
            "version": __version__, "pid": os.getpid(),
            "uptime_s": round(time.monotonic() - self.started, 1),
            "summary": self.summary_line(), "counts": dict(self.scheduler.counts()),
            "running": [r.id for r in self.scheduler.running() if r.state != "paused"],
            "paused": [r.id for r in self.scheduler.jobs.values() if r.state == "paused"],
            "max_jobs": s.max_jobs, "bandwidth_bytes_per_s": self.scheduler.bandwidth.rate,
            "spool_dir": str(self.spool.root), "socket_path": self.socket_path,
            "inotify": self.watcher.using_inotify, "stopping": self.scheduler.stopping,
            "workers": self.scheduler.pool.status(),
        }

    def finished_record(self, ident: str) -> dict[str, Any] | None:
        """A job this daemon no longer remembers, from its done/ or failed/ sidecar."""
        if "/" in ident or ident.startswith("."):
            return None
        found = self.spool.sidecar(ident)
        if found is None:
            return None
        box, record = found
        state = record.get("state") or ("completed" if box == "done" else "failed")
        summary = {"job": ident, "state": state, "box": box}
        if box == "done":
            return {**summary, "result": record}
        return {**summary, "error": {k: record.get(k) for k in ("error", "field", "message")}}

    # --- lifecycle -----------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self._prepare_dirs()
        try:  # before the socket listens: a daemon that answers has its workers
            await self.scheduler.pool.start()
        except (OSError, RuntimeError) as exc:
            await self.scheduler.pool.close(1.0)
            raise BadInput(f"cannot start the worker processes: {exc}",
                           field="daemon.workers") from None
        try:
            await self._listen()
        except BaseException:
            await self.scheduler.pool.close(1.0)
            raise
        assert self._runner is not None
        await ui.listen_tcp(self, self._runner)  # after the socket: a second daemon stops there
        self.watcher.start()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload_requested.set)
        await self.scheduler.scan()
        logger.info("daemon_ready", socket=self.socket_path, spool=str(self.spool.root),
                    inotify=self.watcher.using_inotify, pid=os.getpid())
        self.notifier.ready(self.summary_line())
        background = [asyncio.create_task(c(), name=c.__name__) for c in (
            self._watch_spool, self._tick, self._clean_tmp, self._reloader)]
        if self.settings.daemon.watchdog:
            background.append(asyncio.create_task(self.notifier.watchdog_loop()))
        if self.settings.fleet is not None:
            from fspd.daemon.fleet import draw_jobs

            background.append(asyncio.create_task(draw_jobs(self.scheduler, self.settings)))
        if self.fleet_spool is not None and self.fleet_watcher is not None:
            from fspd.daemon.fleet_spool import watch_fleet_spool

            self.fleet_watcher.start()
            background.append(asyncio.create_task(watch_fleet_spool(
                self, self.fleet_spool, self.fleet_watcher)))
        try:
            await self._stop.wait()
        finally:
            logger.info("daemon_stopping")
            self.notifier.stopping()
            await self.scheduler.shutdown(self.settings.daemon.stop_timeout_s)
            await self.scheduler.pool.close(self.settings.daemon.stop_timeout_s)
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            self.watcher.close()
            if self.fleet_watcher is not None:
                self.fleet_watcher.close()
            self.events.close()
            if self._runner is not None:
                await self._runner.cleanup()
            await self.fleet_view.close()
            with contextlib.suppress(FileNotFoundError):
                if self._own_socket:
                    os.unlink(self.socket_path)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            self.notifier.close()
            logger.info("daemon_stopped")
        return 0

    def _prepare_dirs(self) -> None:
        if self.fleet_spool is not None:
            if self.fleet_spool.root.resolve() == self.spool.root.resolve():
                raise BadInput(f"{self.fleet_spool.root} is daemon.spool_dir too: the fleet's "
                               "spool needs a directory of its own", field="fleet.spool_dir")
            try:
                self.fleet_spool.ensure()
            except OSError as exc:
                raise BadInput(f"cannot create {exc.filename}: {exc.strerror}",
                               field="fleet.spool_dir") from None
        for field, make in (
                ("daemon.spool_dir", self.spool.ensure),
                ("daemon.state_dir", lambda: Path(self.settings.daemon.state_dir).mkdir(
                    parents=True, exist_ok=True, mode=0o750)),
                ("daemon.socket_path", lambda: Path(self.socket_path).parent.mkdir(
                    parents=True, exist_ok=True))):
            try:
                make()
            except OSError as exc:
                raise BadInput(f"cannot create {exc.filename}: {exc.strerror} (run as the "
                               "fspd user, or point it at a writable directory)",
                               field=field) from None

    async def _listen(self) -> None:
        app = control.make_app(self)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False,
                                     shutdown_timeout=1.0)
        await self._runner.setup()
        inherited = listen_fds()
        self._own_socket = not inherited
        if inherited:
            sock = inherited[0]
            if sock.family != socket.AF_UNIX:
                raise BadInput("the socket passed by systemd is not a Unix socket",
                               field="fspd.socket")
            self.socket_path = str(sock.getsockname() or self.socket_path)
            await web.SockSite(self._runner, sock).start()
            logger.info("socket_activated", socket=self.socket_path)
            return
        path = self.socket_path
        control.prepare_socket_path(path)
        old = os.umask(0o117)  # the socket is born 0660: no window with wider access
        try:
            await web.UnixSite(self._runner, path).start()
        except OSError as exc:
            raise BadInput(f"cannot listen on {path}: {exc.strerror}",
                           field="daemon.socket_path") from None
        finally:
            os.umask(old)
        os.chmod(path, 0o660)
        group = self.settings.daemon.socket_group
        if group:
            try:
                os.chown(path, -1, group_id(group))
            except (KeyError, OSError) as exc:
                raise BadInput(f"cannot give the socket to group {group!r}: {exc}",
                               field="daemon.socket_group") from None

    async def _watch_spool(self) -> None:
        """Scan on every inotify wake-up, and at least every rescan/poll interval."""
        while True:
            s = self.settings.daemon
            timeout = s.rescan_interval_s if self.watcher.using_inotify else s.poll_interval_s
            await self.watcher.wait(min(timeout, s.rescan_interval_s))
            try:
                await self.scheduler.scan()
            except OSError as exc:
                logger.error("spool_scan_failed", error=str(exc))

    async def _tick(self) -> None:
        """Progress events for watchers, and the STATUS= line (its rate moves)."""
        last_status = 0.0
        while True:
            await asyncio.sleep(self.settings.daemon.event_interval_s)
            if self.events.listening:
                self.scheduler.publish_progress()
            if time.monotonic() - last_status >= 5.0:
                last_status = time.monotonic()
                self.update_status()

    async def _clean_tmp(self) -> None:
        while True:
            removed = self.spool.clean_tmp(self.settings.daemon.stale_tmp_after_s)
            if removed:
                logger.info("stale_tmp_removed", files=removed)
            await asyncio.sleep(min(TMP_CLEAN_INTERVAL_S, self.settings.daemon.stale_tmp_after_s))

    async def _reloader(self) -> None:
        while True:
            await self._reload_requested.wait()
            self._reload_requested.clear()
            self.notifier.reloading()
            try:
                self.reload()
            finally:
                self.notifier.ready(self.summary_line())

    def reload(self) -> None:
        """Re-read the config file; apply what is safe to change, name what is not."""
        try:
            new = with_overrides(config.load(self.config_path), self.overrides)
        except BadInput as exc:
            logger.error("reload_failed", error=str(exc), kept="previous settings")
            return
        old = self.settings
        fixed = [k for k in FIXED_KEYS
                 if getattr(new.daemon, k) != getattr(old.daemon, k)]
        if fixed:
            logger.warning("reload_needs_restart", keys=[f"daemon.{k}" for k in fixed],
                           kept={f"daemon.{k}": str(getattr(old.daemon, k)) for k in fixed})
            new = new.model_copy(update={"daemon": new.daemon.model_copy(
                update={k: getattr(old.daemon, k) for k in fixed})})
        try:
            policy = Policy.for_group(os.getuid(), new.daemon.control_group)
        except KeyError:
            logger.error("reload_bad_group", control_group=new.daemon.control_group,
                         kept=old.daemon.control_group)
            new = new.model_copy(update={"daemon": new.daemon.model_copy(
                update={"control_group": old.daemon.control_group})})
            policy = self.policy
        changed = _diff(old.model_dump(), new.model_dump())
        self.settings, self.policy = new, policy
        self.scheduler.apply(new)
        self.scheduler.pool.reload(new)
        if new.log_level != old.log_level:
            try:
                log.configure(new.log_level, json=self.log_json)
            except KeyError:
                log.configure(old.log_level, json=self.log_json)
                logger.error("reload_bad_log_level", log_level=new.log_level,
                             kept=old.log_level)
        logger.info("reloaded", changed=changed,
                    note="transfer/retry settings apply to jobs started from now on")
        self.update_status()


def _diff(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _diff(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}")
    return out


def serve(settings: Settings, **kwargs: Any) -> int:
    from fspd.loop import run

    async def main() -> int:
        return await Service(settings, **kwargs).run()

    return run(main())
