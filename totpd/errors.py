"""The one exception hierarchy of totpd.

Every error a person may see is one line that names the thing at fault (file, key,
account, socket) and says what to do next. None ever carries a secret or a code.
"""


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


class BusyError(TotpdError):
    """Too much work of one kind is already waiting: the caller should try again."""


class ClientError(TotpdError):
    """totpctl could not get an answer from the daemon."""
