"""The daemon's start-up and shut-down: `totpd --config FILE`, in the foreground.

It checks its files, loads the master key, opens the store, binds its socket (or
takes the one systemd passes), then opens both doors onto one service, the socket
(server.py) and D-Bus (dbusapi.py), under one admission (admission.py); it tells
systemd it is ready and feeds its watchdog (systemd.py) until SIGTERM or SIGINT,
then drains both doors. One line per event goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import gc
import grp
import logging
import os
import resource
import signal
import socket
import stat
import sys

from . import __version__, clock, config as config_module
from .admission import Admission
from .audit import Audit
from .config import Config
from .errors import BackendMissing, ConfigError, HardeningError, SocketError, TotpdError
from .files import directory_problem, parent
from .notify import Notifier
from .sealing import Sealer, key_check, load_credential, load_key
from .server import Server
from .service import Service
from .store import StoreOptions, check_backend, is_postgres, open_store
from .systemd import sd_notify, systemd_socket, watchdog

log = logging.getLogger("totpd")

PR_SET_DUMPABLE = 4  # <linux/prctl.h>


def bind_socket(config: Config) -> socket.socket:
    path = config.socket
    directory = parent(path)
    try:
        os.makedirs(directory, mode=0o755, exist_ok=True)
    except OSError as exc:
        why = "it exists and is not a directory" if isinstance(exc, FileExistsError) else exc.strerror
        raise SocketError(f"{path}: cannot create the socket's directory {directory}: {why}") from None
    if problem := directory_problem(directory, "the socket"):
        raise SocketError(problem)
    with contextlib.suppress(FileNotFoundError):
        info = os.lstat(path)
        if not stat.S_ISSOCK(info.st_mode):
            raise SocketError(f"{path}: exists and is not a socket; remove it or set 'socket' elsewhere")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # a stale socket from a daemon that died
        else:
            raise SocketError(f"{path}: another daemon is already listening there")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    old_umask = os.umask(0o777)  # no window in which the socket is more open than configured
    try:
        sock.bind(path)
    except OSError as exc:
        sock.close()
        # A path too long for sockaddr_un (108 bytes) is an OSError without an errno.
        raise SocketError(f"{path}: cannot bind the socket: {exc.strerror or exc}") from None
    finally:
        os.umask(old_umask)
    gid = -1
    if config.socket_group:
        try:
            gid = grp.getgrnam(config.socket_group).gr_gid
        except KeyError:
            sock.close()
            raise ConfigError(f"{config.path}: key 'socket_group' names no group '{config.socket_group}'") from None
    try:
        _set_owner_and_mode(path, gid, config.socket_mode)
    except OSError as exc:
        sock.close()
        if gid == -1:
            raise SocketError(f"{path}: cannot set the socket's mode: {exc.strerror}") from None
        raise SocketError(
            f"{config.path}: key 'socket_group': cannot give {path} to group '{config.socket_group}': {exc.strerror}"
            " (the daemon's user must be a member of it)"
        ) from None
    except BaseException:
        sock.close()
        raise
    sock.listen(512)
    return sock


def _set_owner_and_mode(path: str, gid: int, mode: int) -> None:
    """chown and chmod the socket just bound at `path`, never a symlink put in its place:
    both go through a descriptor of the path itself (O_PATH|O_NOFOLLOW), checked to be a socket."""
    try:
        fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise SocketError(f"{path}: cannot open the socket just bound: {exc.strerror}") from None
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            raise SocketError(f"{path}: replaced by something that is not a socket while binding; check the directory")
        itself = f"/proc/self/fd/{fd}"  # the inode fd holds, whatever the path now names
        os.chown(itself, -1, gid)
        os.chmod(itself, mode)
    finally:
        os.close(fd)


def master_key(config: Config) -> bytes:
    credential = config_module.environment_credential_path()
    if credential:
        return load_credential(credential)
    if not is_postgres(config.database) and os.path.isdir(config.database):
        raise ConfigError(f"{config.path}: key 'database' names a directory, {config.database}; name a file in it")
    # A new key only for a new SQLite database: one made for a database that already
    # holds sealed secrets could never open them, and would hide the real fault.
    existing = not is_postgres(config.database) and os.path.exists(config.database) and os.path.getsize(config.database) > 0
    return load_key(config.key_file, create=not existing)


def store_options(config: Config) -> StoreOptions:
    return StoreOptions(
        config.database_password_file, config.database_pool_size, config.database_timeout, prefill_wal=True
    )


def raise_descriptor_limit(config: Config) -> None:
    """Lift the soft RLIMIT_NOFILE to the hard one: every connection is a descriptor.

    systemd and most shells start services with a soft limit of 1024, the same as the
    default max_connections: with the store's and the loop's own descriptors on top,
    accept() would hit EMFILE (and pause for a second) before the cap ever applied.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard and (hard == resource.RLIM_INFINITY or soft < hard):
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    if soft != resource.RLIM_INFINITY and soft < config.max_connections + 64:
        log.warning(
            "the descriptor limit (%d) is below max_connections (%d) + 64: raise LimitNOFILE= or lower max_connections",
            soft, config.max_connections,
        )


def no_core_dumps() -> None:
    """Neither a core dump nor a same-uid ptrace may read the master key or an open secret."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        raise HardeningError(f"prctl(PR_SET_DUMPABLE, 0) failed: {os.strerror(ctypes.get_errno())}")


def run(config: Config) -> None:
    no_core_dumps()
    os.umask(0o077)
    raise_descriptor_limit(config)
    try:
        check_backend(config.database)
    except BackendMissing as exc:
        raise BackendMissing(f"{config.path}: {exc}") from None
    sealer = Sealer(master_key(config))
    store = open_store(config.database, key_check(sealer), store_options(config))
    notifier = None
    audit = Audit(config.audit)
    service = None
    serving = False  # a start-up that fails says one line, the error, and nothing else
    try:
        service = Service(config, store, sealer, audit)
        if config.smtp is not None:
            notifier = Notifier(config.smtp)
            service.listeners.append(notifier)
        handed_over = systemd_socket()
        sock = handed_over or bind_socket(config)
        if clock.synchronized() is False:
            log.warning("this host's clock is not synchronized: TOTP codes may be refused; start an NTP client")
        serving = True
        asyncio.run(serve(config, service, sock, owns_path=handed_over is None))
    finally:
        audit.flush()
        if service is not None:
            service.close()
        if notifier is not None:
            notifier.close()
        store.close()
        if serving:
            log.info("stopped")


async def serve(config: Config, service: Service, sock: socket.socket, owns_path: bool) -> None:
    """Serve `service` through the listening `sock` and, unless `dbus = "off"`, D-Bus,
    until SIGTERM or SIGINT; then finish what is in flight and close both doors."""
    loop = asyncio.get_running_loop()
    eager_tasks(loop)
    stopping = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    admission = Admission(config.max_connections, config.max_connections_per_uid)
    server = Server(config, service, admission)
    server.start(sock)
    log.info("listening on %s (protocol 1, totpd %s)", config.socket, __version__)
    bus_api = None
    if config.dbus != "off":  # optional (docs/dbus.md): without a bus the socket serves alone
        from . import dbusapi

        bus_api = await dbusapi.start(config, service, admission)
    freeze_startup_heap()
    sd_notify("READY=1\nSTATUS=serving")
    pinging = loop.create_task(watchdog())
    try:
        await stopping.wait()
    finally:
        sd_notify("STOPPING=1")
        log.info("stopping: finishing requests in flight")
        pinging.cancel()
        await server.drain()
        if bus_api is not None:  # D-Bus: finish its calls in flight, then leave the bus
            await bus_api.close()
        server.close()
        if owns_path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(config.socket)


def eager_tasks(loop: asyncio.AbstractEventLoop) -> None:
    """On Python 3.12+, a request's task runs at once, up to its first wait, without a loop turn first."""
    if hasattr(asyncio, "eager_task_factory"):
        loop.set_task_factory(asyncio.eager_task_factory)


def freeze_startup_heap() -> None:
    """Take everything start-up built (modules, configuration, the store, D-Bus) out of
    the cyclic garbage collector's sight, once, when the daemon is ready to serve.

    Those objects live as long as the daemon, but every full collection walks them
    again, stalling every request in flight. Objects made later (connections,
    requests) are collected as before; garbage left by start-up is collected first.
    """
    gc.collect()
    gc.freeze()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="totpd", description="TOTP second-factor daemon (runs in the foreground)")
    parser.add_argument("--config", default=config_module.DEFAULT_CONFIG_PATH, help="TOML configuration file")
    parser.add_argument("--version", action="version", version=f"totpd {__version__}")
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, format="totpd: %(levelname)s: %(message)s", level=logging.INFO)
    try:
        config = config_module.load(args.config)
        logging.getLogger().setLevel(config.log_level.upper())
        run(config)
    except TotpdError as exc:
        log.error("%s", exc)
        return 1
    except KeyboardInterrupt:  # Control-C before serving began; once serving, SIGINT stops it cleanly
        log.error("interrupted")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
