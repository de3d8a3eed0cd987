"""The audit trail: one line per decision, and the one place that writes it.

Lines go to syslog (facility authpriv) when a syslog socket exists, else to the
daemon's stderr (which systemd sends to the journal). A line names the event, the
account, the PAM service, the remote host, the caller's uid and the result. It
never holds a secret, a code or a recovery code: callers pass none, and values are
quoted so that a hostile account name cannot forge a second line or field.
"""

from __future__ import annotations

import logging
import os
import stat
import syslog

log = logging.getLogger("totpd")

_LEVELS = {"info": syslog.LOG_INFO, "notice": syslog.LOG_NOTICE, "warning": syslog.LOG_WARNING}


def _quote(value: object) -> str:
    text = str(value)
    if text and all(c.isalnum() or c in "._-@:+" for c in text) and text.isascii():
        return text
    return '"' + text.encode("unicode_escape").decode("ascii").replace('"', '\\"') + '"'


def _syslog_available() -> bool:
    try:
        return stat.S_ISSOCK(os.stat("/dev/log").st_mode)
    except OSError:
        return False


class Audit:
    def __init__(self, mode: str = "auto") -> None:
        self._syslog = mode == "syslog" or (mode == "auto" and _syslog_available())
        if self._syslog:
            # No LOG_CONS: with no syslog daemon, glibc would write every line to the console.
            syslog.openlog("totpd", syslog.LOG_PID, syslog.LOG_AUTHPRIV)

    def record(
        self,
        event: str,
        result: str,
        *,
        user: str = "",
        service: str = "",
        rhost: str = "",
        uid: int | None = None,
        level: str = "info",
        detail: str = "",
    ) -> None:
        fields = [("event", event), ("user", user), ("service", service), ("rhost", rhost)]
        fields.append(("uid", "" if uid is None else uid))
        fields.append(("result", result))
        if detail:
            fields.append(("detail", detail))
        line = "audit " + " ".join(f"{key}={_quote(value)}" for key, value in fields if value != "")
        if self._syslog:
            syslog.syslog(_LEVELS.get(level, syslog.LOG_INFO), line)
        else:
            log.log(logging.WARNING if level == "warning" else logging.INFO, "%s", line)
