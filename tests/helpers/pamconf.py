"""A private PAM confdir with one service file that runs pam_totpd (for tests)."""

from __future__ import annotations

from pathlib import Path

import pamdriver

SERVICE = "totpd-test"


class Stack:
    """A private PAM confdir holding one service file that runs pam_totpd."""

    def __init__(self, confdir: Path, module: str, socket_path: str):
        self.confdir = confdir
        self.module = module
        self.socket_path = socket_path
        self.service = SERVICE

    def write(self, options: str = "", *, module: str | None = None, before: str = "",
              after: str = "", control: str = "required") -> "Stack":
        line = f"auth {control} {module or self.module} socket={self.socket_path} {options}".rstrip()
        pamdriver.write_confdir(str(self.confdir), self.service,
                                [x for x in (before, line, after) if x])
        return self

    def auth(self, answer=None, *, user: str = "alice", rhost: str | None = None,
             tty: str | None = None, flags: int = 0) -> pamdriver.Result:
        return pamdriver.authenticate(self.service, user, str(self.confdir), answer,
                                      rhost=rhost, tty=tty, flags=flags)

    def auth_isolated(self, answer=None, *, user: str = "alice", env=None,
                      **kwargs) -> pamdriver.Result:
        return pamdriver.run_isolated(self.service, user, str(self.confdir), answer,
                                      env=env, **kwargs)
