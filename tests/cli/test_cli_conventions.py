"""Command-line conventions, run as a user types them: global options on either side of the
command, -v/-q, --json error objects, help for every positional, shell completion,
per-destination summaries, ``download --size-of`` and ``verify --dry-run``."""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from fspd.cli import build_parser
from fspd.emulator.control import EmulatorControl
from tests.cli.conftest import Runner, fspd_argv


def _snapshot(emulator: EmulatorControl) -> str:
    return emulator.synthetic(volume_size=1, allocation="sparse", density=0.001, seed=3)


def _json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


# --- global options ----------------------------------------------------------------------

@pytest.mark.parametrize("argv", [
    "--log-level debug --log-json list {snap}",
    "list {snap} --log-level debug --log-json",
    "list {snap} -v --log-json",
    "--log-json -v list {snap}",
])
def test_global_options_work_before_and_after_the_command(
        fspd: Runner, emulator: EmulatorControl, argv: str) -> None:
    snap = _snapshot(emulator)
    result = fspd("fspd " + argv.format(snap=snap))
    assert result.returncode == 0, result.stderr
    levels = {line["level"] for line in _json_lines(result.stderr)}
    assert "debug" in levels, result.stderr  # debug lines, all as JSON
    assert snap in result.stdout


def test_the_default_log_level_is_info(fspd: Runner, emulator: EmulatorControl) -> None:
    result = fspd(f"fspd list {_snapshot(emulator)} --log-json")
    assert result.returncode == 0, result.stderr
    assert "debug" not in {line["level"] for line in _json_lines(result.stderr)}


def test_quiet_prints_no_summary_and_no_info_logs(fspd: Runner, emulator: EmulatorControl
                                                  ) -> None:
    snap = _snapshot(emulator)
    loud = fspd(f"fspd list {snap} --log-json")
    assert loud.returncode == 0 and snap in loud.stdout
    quiet = fspd(f"fspd list {snap} -q --log-json")
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout == ""
    assert all(line["level"] in ("warning", "error") for line in _json_lines(quiet.stderr))


def test_verbose_and_quiet_together_are_bad_input(fspd: Runner, emulator: EmulatorControl
                                                  ) -> None:
    snap = _snapshot(emulator)
    emulator.reset_stats()
    result = fspd(f"fspd list {snap} -v -q")
    assert result.returncode == 2
    assert "--quiet" in result.stderr and "--verbose" in result.stderr
    assert emulator.stats()["requests"] == {}  # refused before any request


# --- --json on failure -------------------------------------------------------------------

@pytest.mark.parametrize(("argv", "code", "field"), [
    ("fspd list not-a-snapshot --json", 2, "snapshot_id"),
    ("fspd list --json", 2, "snapshot_id"),
    ("fspd --json list snap-0123456789abcdef0 --log-level loud", 2, "--log-level"),
    ("fspd status --socket {tmp}/nobody.sock --json", 6, None),
    ("fspd submit {tmp}/missing.toml --json", 2, "jobfile"),
    ("fspd verify not-a-url --json", 2, "url"),
])
def test_json_failures_print_the_error_object_on_stdout(
        fspd: Runner, tmp_path: Path, argv: str, code: int, field: str | None) -> None:
    result = fspd(argv.format(tmp=tmp_path))
    assert result.returncode == code, result.stderr
    error = json.loads(result.stdout)
    assert set(error) >= {"error", "field", "message", "exit_code"}
    assert error["exit_code"] == code
    assert error["field"] == field or (field and field in (error["field"] or "")), error
    assert error["message"] and error["message"] in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(("fspd", "fspd "))


def _archive(fspd_s3: Runner, emulator: EmulatorControl, moto: str, url: str) -> list[str]:
    """movetos3 a small snapshot to ``url``; returns the archive's object keys."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=moto, region_name="us-east-1")
    bucket, prefix = url.removeprefix("s3://").split("/", 1)
    s3.create_bucket(Bucket=bucket)
    made = fspd_s3(f"fspd movetos3 {_snapshot(emulator)} {url}",
                   extra_env={"AWS_ENDPOINT_URL_S3": moto})
    assert made.returncode == 0, made.stderr
    return [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]]


def test_verify_json_failure_is_one_object_with_the_report(
        fspd_s3: Runner, emulator: EmulatorControl, moto: str) -> None:
    import boto3

    keys = _archive(fspd_s3, emulator, moto, "s3://verify-bk/web01")
    segment = next(k for k in keys if "/segments/" in k)
    boto3.client("s3", endpoint_url=moto, region_name="us-east-1").delete_object(
        Bucket="verify-bk", Key=segment)
    result = fspd_s3("fspd verify s3://verify-bk/web01 --json")
    assert result.returncode == 4, result.stderr
    report = json.loads(result.stdout)  # one JSON document, not a report and an error
    assert report["exit_code"] == 4 and report["error"] == "TransferFailed"
    assert report["ok"] is False and report["problem_count"] >= 1


# --- help and completion -----------------------------------------------------------------

def _positionals(parser: argparse.ArgumentParser, path: str):
    for action in parser._actions:
        if action.option_strings:
            continue
        yield path, action
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _positionals(sub, f"{path} {name}")


def test_every_positional_argument_of_every_command_has_help() -> None:
    missing = [f"{path} {action.dest}" for path, action in _positionals(build_parser(), "fspd")
               if not action.help or action.help == argparse.SUPPRESS]
    assert not missing, missing


def test_completion_command_prints_bash_code(fspd: Runner) -> None:
    result = fspd("fspd completion bash")
    assert result.returncode == 0, result.stderr
    assert "complete " in result.stdout and "fspd" in result.stdout


def _complete(line: str, tmp_path: Path, env: dict[str, str]) -> list[str]:
    """What TAB offers after ``line``: fspd run with argcomplete's environment protocol."""
    import subprocess

    out = tmp_path / "completions"
    subprocess.run(fspd_argv(["fspd"]), env={
        **env, "_ARGCOMPLETE": "1", "COMP_LINE": line, "COMP_POINT": str(len(line)),
        "_ARGCOMPLETE_STDOUT_FILENAME": str(out), "_ARGCOMPLETE_IFS": "\n"},
        check=True, timeout=60, capture_output=True, stdin=subprocess.DEVNULL)
    return out.read_text().split("\n")


def test_tab_completes_the_commands_and_their_options(tmp_path: Path,
                                                     cli_env: dict[str, str]) -> None:
    verbs = _complete("fspd ", tmp_path, cli_env)
    assert {"list", "download", "movetos3", "verify", "status", "completion"} <= set(verbs)
    assert [v for v in _complete("fspd down", tmp_path, cli_env) if v.strip()] == ["download "]
    options = _complete("fspd download --s", tmp_path, cli_env)
    assert "--size-of" in [o.strip() for o in options]


# --- summaries ---------------------------------------------------------------------------

def test_summary_names_every_destination(fspd_s3: Runner, emulator: EmulatorControl,
                                         tmp_path: Path, moto: str) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=moto, region_name="us-east-1")
    s3.create_bucket(Bucket="backups-bk")
    snap = _snapshot(emulator)
    (tmp_path / "job.toml").write_text(f"""
[source]
type = "ebs"
snapshot_id = "{snap}"

[[destinations]]
type = "file"
path = "{tmp_path / 'out.img'}"

[[destinations]]
type = "s3"
bucket = "backups-bk"
prefix = "backups/web01"

[[destinations]]
type = "ebs"
region = "us-east-1"
""")
    result = fspd_s3("fspd run job.toml")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    copy = next(s["id"] for s in emulator.snapshots() if s["id"] != snap)
    assert any(str(tmp_path / "out.img") in line and "completed" in line for line in lines)
    assert any("s3://backups-bk/backups/web01" in line and "completed" in line for line in lines)
    assert any(copy in line and "us-east-1" in line for line in lines)
    assert "None" not in result.stdout


# --- download --size-of ------------------------------------------------------------------

def test_upload_then_download_size_of_gives_back_the_same_file(fspd: Runner,
                                                               tmp_path: Path) -> None:
    original = tmp_path / "disk.img"
    original.write_bytes(os.urandom(3 * 1024 * 1024 + 4321))
    upload = fspd("fspd upload disk.img --json")
    assert upload.returncode == 0, upload.stderr
    snap = json.loads(upload.stdout)["destinations"][0]["snapshot_id"]

    whole = fspd(f"fspd download {snap} whole.img")
    assert whole.returncode == 0, whole.stderr
    assert (tmp_path / "whole.img").stat().st_size == 1 << 30  # the volume, not the file

    cut = fspd(f"fspd download {snap} back.img --size-of disk.img --json")
    assert cut.returncode == 0, cut.stderr
    assert json.loads(cut.stdout)["truncated_to"] == original.stat().st_size
    assert filecmp.cmp(original, tmp_path / "back.img", shallow=False)


def test_size_of_a_file_larger_than_the_volume_is_refused(fspd: Runner,
                                                          emulator: EmulatorControl,
                                                          tmp_path: Path) -> None:
    big = tmp_path / "big.img"
    with big.open("wb") as f:
        f.truncate((1 << 30) + 1)
    result = fspd(f"fspd download {_snapshot(emulator)} out.img --size-of big.img")
    assert result.returncode == 2, result.stderr
    assert "--size-of" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    missing = fspd(f"fspd download {_snapshot(emulator)} out2.img --size-of nope.img")
    assert missing.returncode == 2 and "--size-of" in missing.stderr
    assert not (tmp_path / "out2.img").exists()  # refused before anything was downloaded


# --- verify --dry-run --------------------------------------------------------------------

@pytest.fixture
def recording_moto(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A moto server of its own that records every request it serves into a file (the shared
    one's recorder would write into the current directory)."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    record = tmp_path / "moto-requests.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                             str(port)], cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL,
                            env={**os.environ, "MOTO_RECORDER_FILEPATH": str(record)})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"{url}/moto-api/", timeout=1).close()
            break
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, "moto did not start"
            time.sleep(0.1)
    yield url, record
    proc.terminate()
    proc.wait(10)


def _recording(url: str, what: str) -> None:
    import urllib.request

    req = urllib.request.Request(f"{url}/moto-api/recorder/{what}-recording", method="POST")
    urllib.request.urlopen(req, timeout=10).close()


def _gets(record: Path) -> list[str]:
    lines = record.read_text().splitlines() if record.exists() else []
    return [e["url"] for e in map(json.loads, lines) if e["method"] == "GET"]


def test_verify_dry_run_plans_without_reading_a_segment(
        fspd_s3: Runner, emulator: EmulatorControl, recording_moto: tuple[str, Path]) -> None:
    moto, record = recording_moto
    _archive(fspd_s3, emulator, moto, "s3://plan-bk/web01")
    s3 = {"AWS_ENDPOINT_URL_S3": moto}

    _recording(moto, "start")
    plan = fspd_s3("fspd verify s3://plan-bk/web01 --dry-run --json", extra_env=s3)
    _recording(moto, "stop")
    assert plan.returncode == 0, plan.stderr
    gets = _gets(record)
    assert any("manifest" in u for u in gets), gets  # the manifest is read and checked
    assert not [u for u in gets if "/segments/" in u], gets

    _recording(moto, "reset")
    _recording(moto, "start")
    real = fspd_s3("fspd verify s3://plan-bk/web01 --json", extra_env=s3)
    _recording(moto, "stop")
    assert real.returncode == 0, real.stderr
    segment_gets = [u for u in _gets(record) if "/segments/" in u]
    report, done = json.loads(plan.stdout), json.loads(real.stdout)
    assert report["dry_run"] is True and report["ok"] is True
    assert report["plan"]["segments"] == done["archives"][0]["segments_verified"] >= 1
    assert len(segment_gets) >= report["plan"]["segments"]  # what the dry run spared
    assert report["plan"]["blocks"] == done["archives"][0]["blocks_verified"]
    human = fspd_s3("fspd verify s3://plan-bk/web01 -n", extra_env=s3)
    assert human.returncode == 0 and "would verify" in human.stdout, human.stderr


def test_output_into_a_closed_pipe_ends_quietly(cli_env: dict[str, str], tmp_path: Path) -> None:
    """``fspd completion bash | head -1`` where head has already gone: no traceback, SIGPIPE's
    status. The pipe's reading end is closed before fspd starts, so every write fails."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run(fspd_argv("fspd completion bash"), stdout=write_end,
                                stderr=subprocess.PIPE, text=True, env=cli_env, cwd=tmp_path,
                                timeout=60)
    finally:
        os.close(write_end)
    assert result.returncode == 141, result.stderr
    assert result.stderr == "", result.stderr
