"""The audit trail: one line per decision, and the one place that writes it.

Lines go to syslog (facility authpriv) when a syslog socket exists, else to the
daemon's stderr (which systemd sends to the journal). A line names the event, the
account, the PAM service, the remote host, the caller's uid and the result. It
never holds a secret, a code or a recovery code: callers pass none, and values are
quoted so that a hostile account name cannot forge a second line or field.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import stat
import sys
import syslog

log = logging.getLogger("totpd")

_LEVELS = {"info": syslog.LOG_INFO, "notice": syslog.LOG_NOTICE, "warning": syslog.LOG_WARNING}


_PLAIN = re.compile(r"[A-Za-z0-9._@:+-]+")


def quote(value: object) -> str:
    """`value` as one token of a log line: plain as it is, else quoted with every
    control character escaped, so a hostile name cannot forge a line or a field."""
    text = str(value)
    if _PLAIN.fullmatch(text):
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
        self._pending: list[str] = []
        if self._syslog:
            # No LOG_CONS: with no syslog daemon, glibc would write every line to the console.
            syslog.openlog("totpd", syslog.LOG_PID, syslog.LOG_AUTHPRIV)

    def record(
        self,
        event: str,
        result: str,
        *,
        user: str = "",
        given: str = "",
        service: str = "",
        rhost: str = "",
        token: str = "",
        uid: int | None = None,
        level: str = "info",
        detail: str = "",
    ) -> None:
        fields = [("event", event), ("user", user), ("given", given), ("service", service), ("rhost", rhost)]
        if token:
            fields.append(("token", token))
        fields.append(("uid", "" if uid is None else uid))
        fields.append(("result", result))
        if detail:
            fields.append(("detail", detail))
        line = "audit " + " ".join(f"{key}={quote(value)}" for key, value in fields if value != "")
        if self._syslog:
            syslog.syslog(_LEVELS.get(level, syslog.LOG_INFO), line)
            return
        severity = logging.WARNING if level == "warning" else logging.INFO
        if not log.isEnabledFor(severity):
            return
        # The daemon's log format written directly, without a LogRecord per login; inside
        # the event loop, the lines of one turn go out in one write at the end of it.
        text = f"totpd: {logging.getLevelName(severity)}: {line}\n"
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            sys.stderr.write(text)
            return
        if not self._pending:
            loop.call_soon(self.flush)
        self._pending.append(text)

    def flush(self) -> None:
        if self._pending:
            lines, self._pending = self._pending, []
            sys.stderr.write("".join(lines))
            sys.stderr.flush()
