"""Mail notifications: enrollment, reset, recovery-code use, lockout.

A listener on the service's events. Sending happens on one background thread with
a bounded queue, so a slow or dead SMTP server never delays or fails a login; a
failure costs one log line. Mail never carries a secret or a code.
"""

from __future__ import annotations

import concurrent.futures
import datetime
import email.message
import logging
import smtplib
import socket
import ssl
import threading

from .audit import quote
from .config import SmtpConfig

log = logging.getLogger("totpd")

MAX_PENDING = 100

_EVENT_KEYS = {"enrolled": "enroll", "reset": "reset", "recovery_code_used": "recovery_code_used", "locked": "locked"}

_TEXT = {
    "enroll": (
        "New two-factor authenticator for {user} on {host}",
        "An authenticator app was enrolled as the second factor of account {user} on {host}{where}.",
    ),
    "reset": (
        "Two-factor enrollment removed for {user} on {host}",
        "The second factor of account {user} on {host} was reset by an administrator.",
    ),
    "recovery_code_used": (
        "Recovery code used for {user} on {host}",
        "A recovery code was used in place of a verification code to log in as {user} on {host}{where}."
        " Each recovery code works once.",
    ),
    "locked": (
        "Account {user} locked on {host} after failed codes",
        "Account {user} on {host} is locked after too many wrong verification codes{where}.",
    ),
}


class Notifier:
    def __init__(self, smtp: SmtpConfig) -> None:
        self._smtp = smtp
        self._host = socket.gethostname()
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="smtp")
        self._pending = 0
        self._lock = threading.Lock()

    def __call__(self, event: str, fields: dict[str, object]) -> None:
        key = _EVENT_KEYS.get(event)
        if key is None or key not in self._smtp.events:
            return
        user = str(fields.get("user", ""))
        with self._lock:
            if self._pending >= MAX_PENDING:
                log.warning("notification for %s (%s) dropped: %d mails already waiting", quote(user), key, MAX_PENDING)
                return
            self._pending += 1
        self._pool.submit(self._send, key, user, dict(fields), datetime.datetime.now(datetime.timezone.utc))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def address(self, user: str) -> str | None:
        smtp = self._smtp
        if smtp.address_file:
            try:
                with open(smtp.address_file, encoding="utf-8") as handle:
                    for line in handle:
                        parts = line.split("#", 1)[0].split()
                        if len(parts) == 2 and parts[0] == user:
                            return parts[1]
            except OSError as exc:
                log.warning("notification address file %s unreadable: %s", smtp.address_file, exc.strerror)
        if smtp.address_template:
            address = smtp.address_template.replace("{user}", user)
            if "@" in address and not any(c.isspace() or ord(c) < 32 for c in address):
                return address
        return None

    def _send(self, key: str, user: str, fields: dict[str, object], when: datetime.datetime) -> None:
        try:
            address = self.address(user)
            if address is None:
                log.info("no mail address for %s; %s notification not sent", quote(user), key)
                return
            rhost = str(fields.get("rhost") or "")
            service = str(fields.get("service") or "")
            where = f" (service {service}" + (f", from {rhost}" if rhost else "") + ")" if service else ""
            subject, body = _TEXT[key]
            message = email.message.EmailMessage()
            message["From"] = self._smtp.sender
            message["To"] = address
            message["Subject"] = subject.format(user=user, host=self._host)
            message.set_content(
                body.format(user=user, host=self._host, where=where)
                + f"\n\nTime: {when:%Y-%m-%d %H:%M:%S} UTC\n\n"
                "If this was not you or your administrator, tell your administrator now.\n"
            )
            self._deliver(message)
            log.info("notification %s for %s sent", key, quote(user))
        except (OSError, smtplib.SMTPException) as exc:
            log.warning("notification %s for %s not sent: %s", key, quote(user), exc)
        finally:
            with self._lock:
                self._pending -= 1

    def _deliver(self, message: email.message.EmailMessage) -> None:
        smtp = self._smtp
        with smtplib.SMTP(smtp.host, smtp.port, timeout=smtp.timeout) as client:
            if smtp.starttls:
                client.starttls(context=ssl.create_default_context())
            if smtp.username:
                with open(smtp.password_file, encoding="utf-8") as handle:
                    password = handle.readline().rstrip("\n")
                client.login(smtp.username, password)
            client.send_message(message)
