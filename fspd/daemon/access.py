"""Who may do what on the control socket, from the peer's kernel-verified credentials.

Anyone who can connect (socket mode 0660, group ``socket_group``) may read. Control actions
(cancel, pause, resume, bandwidth) need root, the daemon's own uid, or membership of
``control_group`` (primary or supplementary).
"""

from __future__ import annotations

import grp
import pwd
import socket
import struct
from dataclasses import dataclass
from typing import Any

_UCRED = struct.Struct("3i")


@dataclass(frozen=True)
class Peer:
    pid: int
    uid: int
    gid: int


@dataclass(frozen=True)
class Policy:
    daemon_uid: int
    control_gid: int | None = None
    control_members: frozenset[str] = frozenset()
    control_group: str | None = None

    @classmethod
    def for_group(cls, daemon_uid: int, group: str | None) -> Policy:
        if not group:
            return cls(daemon_uid)
        entry = grp.getgrnam(group) if not group.isdigit() else grp.getgrgid(int(group))
        return cls(daemon_uid, entry.gr_gid, frozenset(entry.gr_mem), entry.gr_name)

    def may_control(self, peer: Peer, user_name: str | None = None) -> bool:
        if peer.uid in (0, self.daemon_uid):
            return True
        if self.control_gid is None:
            return False
        if peer.gid == self.control_gid:
            return True
        if user_name is None:
            user_name = _user_name(peer.uid)
        return user_name is not None and user_name in self.control_members

    def explain(self) -> str:
        who = f"root or uid {self.daemon_uid}"
        if self.control_group:
            who += f" or members of group {self.control_group!r}"
        return who


def _user_name(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


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
