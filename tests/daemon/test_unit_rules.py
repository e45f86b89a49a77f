"""The shipped unit's syscall filter lets fspd give its socket to ``socket_group`` (issue 12,
item 4): the filter as systemd expands it allows chown/fchown/fchownat and still denies the
rest of @privileged, and ``fspd serve --socket-group`` starts under exactly that filter
(seccomp, through libseccomp), where the filter without @chown makes it fail."""

from __future__ import annotations

import ctypes.util
import grp
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli.conftest import fspd_argv
from tests.conftest import ROOT
from tests.daemon.conftest import wait_for

ANALYZE = shutil.which("systemd-analyze")
LIBSECCOMP = ctypes.util.find_library("seccomp")
UNIT = ROOT / "systemd" / "fspd.service"
CHOWN_CALLS = {"chown", "fchown", "fchownat"}

pytestmark = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")


def _groups() -> dict[str, list[str]]:
    """systemd's syscall groups (``@name`` -> members, groups included by name)."""
    out = subprocess.run([str(ANALYZE), "syscall-filter"], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    groups: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in out.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.strip(), [])
        elif not line.strip() or not line.startswith(" "):
            current = None  # the "unlisted" trailer and blank lines end a group
        elif current is not None and not line.strip().startswith("#"):
            current.append(line.strip())
    return groups


def _expand(item: str, groups: dict[str, list[str]]) -> set[str]:
    if not item.startswith("@"):
        return {item}
    return set().union(*(_expand(m, groups) for m in groups[item]))


def effective_allow_list(unit_text: str, groups: dict[str, list[str]]) -> set[str]:
    """What the unit's SystemCallFilter= lines allow, applied in order as systemd does: the
    first (not ~) starts an allow list with @default; later lines add, ~ lines remove."""
    lines = re.findall(r"^SystemCallFilter=(.*)$", unit_text, re.MULTILINE)
    assert lines and not lines[0].startswith("~"), "the unit should use an allow list"
    allowed = _expand("@default", groups)
    for line in lines:
        deny = line.startswith("~")
        for item in line.removeprefix("~").split():
            calls = _expand(item, groups)
            allowed = allowed - calls if deny else allowed | calls
    return allowed


def test_the_units_filter_allows_chown_and_still_denies_the_rest_of_privileged() -> None:
    groups = _groups()
    allowed = effective_allow_list(UNIT.read_text(), groups)
    assert allowed >= CHOWN_CALLS
    still_denied = (_expand("@privileged", groups) - _expand("@chown", groups)
                    - _expand("@system-service", groups) - _expand("@default", groups))
    assert still_denied and not (still_denied & allowed)
    assert {"setuid", "chroot", "bpf", "reboot", "setrlimit"}.isdisjoint(allowed)


def test_systemd_itself_reads_the_unit_as_allowing_chown(tmp_path: Path) -> None:
    unit = tmp_path / "fspd.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/fspd", sys.executable))
    shutil.copy(ROOT / "systemd" / "fspd.socket", tmp_path / "fspd.socket")
    verify = subprocess.run([str(ANALYZE), "--man=no", "verify", str(unit),
                             str(tmp_path / "fspd.socket")], capture_output=True, text=True,
                            timeout=60)
    assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr
    security = subprocess.run([str(ANALYZE), "security", "--offline=true", str(unit)],
                              capture_output=True, text=True, timeout=60).stdout
    assert re.search(r"@privileged is included \(e\.g\. \w*chown\w* is allowed\)", security), \
        security
    assert re.search(r"and @resources is not included", security)


# Loads an allow-list seccomp filter (EPERM for everything else, as SystemCallErrorNumber=EPERM
# does) and execs the command: the unit's syscall rules, without systemd.
SECCOMP_EXEC = """
import ctypes, json, os, sys
lib = ctypes.CDLL(sys.argv[1], use_errno=True)
lib.seccomp_init.restype = ctypes.c_void_p
lib.seccomp_init.argtypes = [ctypes.c_uint32]
lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
lib.seccomp_rule_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint]
lib.seccomp_load.argtypes = [ctypes.c_void_p]
ctx = lib.seccomp_init(0x00050000 | 1)  # SCMP_ACT_ERRNO(EPERM)
for name in json.loads(open(sys.argv[2]).read()):
    nr = lib.seccomp_syscall_resolve_name(name.encode())
    if nr >= 0:  # not a syscall of this architecture: nothing to allow
        lib.seccomp_rule_add(ctx, 0x7FFF0000, nr, 0)  # SCMP_ACT_ALLOW
if lib.seccomp_load(ctx) != 0:
    sys.exit("seccomp_load failed")
os.execv(sys.argv[3], sys.argv[3:])
"""


@pytest.fixture
def short_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="fspd-unit-"))  # short: Unix socket paths are limited
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _serve_under(allowed: set[str], root: Path) -> tuple[subprocess.Popen[str], Path]:
    rules = root / "allowed.json"
    rules.write_text(json.dumps(sorted(allowed)))
    sock = root / "fspd.sock"
    group = grp.getgrgid(65534).gr_name
    argv = fspd_argv(["serve", "--spool", str(root / "spool"), "--state-dir",
                      str(root / "state"), "--socket", str(sock), "--socket-group", group])
    proc = subprocess.Popen([sys.executable, "-c", SECCOMP_EXEC, str(LIBSECCOMP), str(rules),
                             *argv], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, text=True)
    return proc, sock


@pytest.mark.skipif(LIBSECCOMP is None, reason="libseccomp is not installed")
@pytest.mark.parametrize("unit_filter", ["shipped", "without @chown"])
def test_fspd_serve_with_a_socket_group_under_the_units_seccomp_filter(
        short_dir: Path, unit_filter: str) -> None:
    text = UNIT.read_text()
    if unit_filter == "without @chown":
        text = text.replace("SystemCallFilter=@chown\n", "")
    proc, sock = _serve_under(effective_allow_list(text, _groups()), short_dir)
    try:
        wait_for(lambda: proc.poll() is not None or (sock.exists() and os.stat(sock).st_gid
                 == 65534), 30, "fspd serve to listen or exit")
        if unit_filter == "shipped":
            assert proc.poll() is None, proc.communicate()[0]
            assert os.stat(sock).st_gid == 65534
        else:
            out = proc.communicate(timeout=30)[0]
            assert proc.returncode == 2 and "daemon.socket_group" in out, out
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.communicate(timeout=30)
