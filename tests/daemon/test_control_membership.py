"""Control rights follow the control group as it is now (issue 12, item 3): a user removed
from the group loses them within seconds, with no SIGHUP, even from a session that still
carries the group in its credentials."""

from __future__ import annotations

import grp
import json
import os
import pwd
import secrets
import shutil
import subprocess
from collections.abc import Callable, Iterator

import pytest

from fspd.daemon.access import MEMBERSHIP_TTL_S, Membership
from tests.cli.conftest import fspd_argv
from tests.daemon.conftest import Daemon, wait_for


def test_membership_is_read_again_once_the_cache_is_older_than_its_ttl() -> None:
    now = [100.0]
    members = {"ops"}
    reads = []

    def members_of(gid: int) -> frozenset[str]:
        reads.append(gid)
        return frozenset(members)

    m = Membership(50, 2.0, members_of=members_of, user_of=lambda uid: ("ops", 1000),
                   clock=lambda: now[0])
    assert m.includes(1000) and m.includes(1000) and len(reads) == 1  # cached
    members.clear()
    now[0] += 1.9
    assert m.includes(1000)  # still within the TTL
    now[0] += 0.2
    assert not m.includes(1000) and len(reads) == 2  # re-read: removed


@pytest.fixture
def ops_user() -> Iterator[tuple[str, str]]:
    """A throwaway user and group (the user a member of it), removed afterwards."""
    if os.geteuid() != 0 or not all(shutil.which(t) for t in ("useradd", "groupadd",
                                                                 "gpasswd", "setpriv")):
        pytest.skip("needs root, useradd/groupadd/gpasswd and setpriv")
    tag = secrets.token_hex(3)
    user, group = f"fspdu{tag}", f"fspdc{tag}"
    subprocess.run(["groupadd", group], check=True)
    try:
        subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin",
                        "--groups", group, user], check=True)
        try:
            yield user, group
        finally:
            subprocess.run(["userdel", user], check=False)
    finally:
        subprocess.run(["groupdel", group], check=False)


def _as_user(user: str, group: str) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``fspd ARGS`` as ``user`` in a session that keeps ``group`` in its credentials."""
    uid, gid = pwd.getpwnam(user).pw_uid, pwd.getpwnam(user).pw_gid
    extra = grp.getgrnam(group).gr_gid

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        as_user = ["setpriv", f"--reuid={uid}", f"--regid={gid}", f"--groups={extra}"]
        result = subprocess.run([*as_user, *fspd_argv(list(args))], capture_output=True,
                                text=True, timeout=60, stdin=subprocess.DEVNULL, cwd="/")
        assert "Traceback" not in result.stderr, result.stderr
        return result

    return run


def test_a_user_removed_from_the_control_group_is_refused_without_a_sighup(
        make_daemon: Callable[..., Daemon], ops_user: tuple[str, str]) -> None:
    user, group = ops_user
    d = make_daemon("--socket-group", group, "--control-group", group)
    as_ops = _as_user(user, group)
    allowed = as_ops("bandwidth", "100M", "--socket", d.socket)
    assert allowed.returncode == 0, allowed.stderr
    assert d.api("/v1/status")["bandwidth_bytes_per_s"] == 100 << 20  # 100M: MiB/s

    subprocess.run(["gpasswd", "--delete", user, group], check=True, capture_output=True)

    def refused() -> subprocess.CompletedProcess[str] | None:
        result = as_ops("bandwidth", "200M", "--socket", d.socket)
        return result if result.returncode == 3 else None

    result = wait_for(refused, 10 * MEMBERSHIP_TTL_S, "the removed user to be refused")
    assert "may only read" in result.stderr
    again = as_ops("bandwidth", "300M", "--socket", d.socket)
    assert again.returncode == 3, again.stderr
    status = as_ops("status", "--json", "--socket", d.socket)  # reading is still allowed
    assert status.returncode == 0 and json.loads(status.stdout)["you"]["control"] is False
    assert d.api("/v1/status")["bandwidth_bytes_per_s"] in (100 << 20, 200 << 20)
    assert "reloaded" not in d.log()
