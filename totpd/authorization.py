"""Authorization: what a caller may do, from who it is, never from what it asks.

On the socket a caller is its SO_PEERCRED (pid, uid, gid); on D-Bus it also carries
what polkit granted for the call. Root and members of `admin_group` may act on any
account, a user on their own; only root on the socket is the PAM module, whose
service and remote host describe a real login.
"""

from __future__ import annotations

import dataclasses

from . import identity
from .config import Config
from .protocol import Request
from .workers import Worker


@dataclasses.dataclass(frozen=True)
class Caller:
    pid: int
    uid: int
    gid: int
    # A D-Bus call carries what polkit granted for it: "any" account, "own" account
    # only, or "none" (totpd/dbusapi.py). None on the socket: the uid decides.
    granted: str | None = None


def is_pam(caller: Caller) -> bool:
    """Is this the PAM module, whose service and rhost describe a real login? Root on the socket."""
    return caller.granted is None and caller.uid == 0


class Authority:
    """The two questions every handler asks, each answered in one place."""

    def __init__(self, config: Config, nss: Worker) -> None:
        self._admin_group = config.admin_group
        self._nss = nss

    async def is_admin(self, caller: Caller) -> bool:
        if caller.granted is not None:
            return caller.granted == "any"
        if caller.uid == 0:
            return True
        if not self._admin_group:
            return False
        return await self._nss.run(identity.in_group, caller.uid, caller.gid, self._admin_group)

    async def is_self(self, caller: Caller, request: Request) -> bool:
        """Does the request name the caller's own account? The uid comes from the service's
        identity step; a request that did not pass it (one a handler built) is looked up."""
        if caller.granted == "none":
            return False
        return await identity.uid_of(request.user, request.user_uid, self._nss) == caller.uid

    async def may_act_on(self, caller: Caller, request: Request, allow_self: bool) -> bool:
        return await self.is_admin(caller) or (allow_self and await self.is_self(caller, request))
