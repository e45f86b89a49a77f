"""Who may do what on the control socket, from the peer's kernel-verified credentials.

Anyone who can connect (socket mode 0660, group ``socket_group``) may read. Control actions
(cancel, pause, resume, bandwidth) need root, the daemon's own uid, or membership of
``control_group`` (primary or supplementary) as the group database says now: membership is
looked up per request (cached for at most ``MEMBERSHIP_TTL_S``), so removing a user from the
group takes their control rights within seconds, without a SIGHUP.
"""

from __future__ import annotations

import grp
import pwd
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

_UCRED = struct.Struct("3i")
MEMBERSHIP_TTL_S = 2.0
_MAX_CACHED_USERS = 1024


@dataclass(frozen=True)
class Peer:
    pid: int
    uid: int
    gid: int


def _group_members(gid: int) -> frozenset[str]:
    try:
        return frozenset(grp.getgrgid(gid).gr_mem)
    except KeyError:
        return frozenset()


def _user(uid: int) -> tuple[str, int] | None:
    try:
        entry = pwd.getpwuid(uid)
    except KeyError:
        return None
    return entry.pw_name, entry.pw_gid


class Membership:
    """Who is in one group, from the group and user databases, re-read at most every
    ``ttl_s`` seconds (the answers are cached that long, for a bounded number of users)."""

    def __init__(self, gid: int, ttl_s: float = MEMBERSHIP_TTL_S, *,
                 members_of: Callable[[int], frozenset[str]] = _group_members,
                 user_of: Callable[[int], tuple[str, int] | None] = _user,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.gid, self.ttl_s = gid, ttl_s
        self._members_of, self._user_of, self._clock = members_of, user_of, clock
        self._members: tuple[float, frozenset[str]] | None = None
        self._users: dict[int, tuple[float, tuple[str, int] | None]] = {}

    def _fresh(self, at: float) -> bool:
        return self._clock() - at < self.ttl_s

    def members(self) -> frozenset[str]:
        if self._members is None or not self._fresh(self._members[0]):
            self._members = (self._clock(), self._members_of(self.gid))
        return self._members[1]

    def user(self, uid: int) -> tuple[str, int] | None:
        cached = self._users.get(uid)
        if cached is None or not self._fresh(cached[0]):
            if len(self._users) >= _MAX_CACHED_USERS:
                self._users.clear()
            cached = self._users[uid] = (self._clock(), self._user_of(uid))
        return cached[1]

    def includes(self, uid: int) -> bool:
        """The user is in the group now: as their primary group, or listed as a member."""
        user = self.user(uid)
        if user is None:
            return False
        name, primary = user
        return primary == self.gid or name in self.members()


@dataclass(frozen=True)
class Policy:
    daemon_uid: int
    control_gid: int | None = None
    control_group: str | None = None
    membership: Membership | None = field(default=None, compare=False, repr=False)

    @classmethod
    def for_group(cls, daemon_uid: int, group: str | None) -> Policy:
        if not group:
            return cls(daemon_uid)
        entry = grp.getgrnam(group) if not group.isdigit() else grp.getgrgid(int(group))
        return cls(daemon_uid, entry.gr_gid, entry.gr_name, Membership(entry.gr_gid))

    def may_control(self, peer: Peer) -> bool:
        if peer.uid in (0, self.daemon_uid):
            return True
        if self.control_gid is None:
            return False
        membership = self.membership or Membership(self.control_gid)
        return membership.includes(peer.uid)

    def explain(self) -> str:
        who = f"root or uid {self.daemon_uid}"
        if self.control_group:
            who += f" or members of group {self.control_group!r}"
        return who


def peer_of(transport: Any) -> Peer | None:
    """SO_PEERCRED of a Unix-socket connection; None if not available (not AF_UNIX)."""
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or getattr(sock, "family", None) != socket.AF_UNIX:
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    except OSError:
        return None
    return Peer(*_UCRED.unpack(raw))


def group_id(group: str) -> int:
    return grp.getgrgid(int(group)).gr_gid if group.isdigit() else grp.getgrnam(group).gr_gid
