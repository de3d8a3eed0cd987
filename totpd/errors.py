"""The one exception hierarchy of totpd.

Every error a person may see is one line that names the thing at fault (file, key,
account, socket) and says what to do next. None ever carries a secret or a code.
"""

from __future__ import annotations


class TotpdError(Exception):
    """Base of every error totpd raises on purpose."""


class ConfigError(TotpdError):
    """The configuration file is unreadable or holds a bad key or value."""


class ProtocolError(TotpdError):
    """A frame or payload that does not follow docs/protocol.md."""


class FrameError(ProtocolError):
    """The framing itself is broken: the stream can no longer be trusted."""


class SealingError(TotpdError):
    """The master key is missing, malformed, or does not open the store."""


class StoreError(TotpdError):
    """The store cannot be opened, read or written (corrupt file, full disk, ...)."""


class StoreUnavailable(StoreError):
    """A transient store failure: the decision cannot be made now (fail closed)."""


class StoreAbsent(StoreError):
    """Opened with create=False and there is no totpd store there yet."""


class BackendMissing(StoreError):
    """The database is PostgreSQL, and psycopg or psycopg_pool cannot be imported."""


class MigrationRefused(StoreError):
    """The target already holds some of the accounts, and --force was not given."""


class ImportFileError(TotpdError):
    """A file we cannot import; the message names the file and the line."""


class StackError(TotpdError):
    """A PAM stack line libpam would refuse; libpam installs it as a module that always fails."""


class SocketError(TotpdError):
    """The daemon's listening socket cannot be made, bound, given its owner and mode,
    or taken over from systemd."""


class HardeningError(TotpdError):
    """The daemon cannot shield its memory (no core dumps, no ptrace by its own uid)."""


class BusyError(TotpdError):
    """Too much work of one kind is already waiting: the caller should try again."""


class ClientError(TotpdError):
    """totpctl could not get an answer from the daemon."""


class Refused(TotpdError):
    """The daemon answered, and the answer was no (totpctl exits 1): what was asked,
    the reply's status and its message (the status alone when it has none)."""

    def __init__(self, what: str, status: str, message: str = "") -> None:
        super().__init__(f"{what}: {message or status.lower().replace('_', ' ')}")


class CannotRun(TotpdError):
    """totpctl doctor cannot do its job at all (exit 2)."""


class CallRefused(TotpdError):
    """A D-Bus call answered with a D-Bus error before or after the service (name, one-line text)."""

    def __init__(self, name: str, text: str) -> None:
        super().__init__(text)
        self.name = name
        self.text = text
