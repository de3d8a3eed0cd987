"""A throwaway PostgreSQL cluster on a temp dir, for the tests and the benchmarks.

`initdb` + `pg_ctl` from Debian's postgresql package, run as the `postgres` user when
we are root (initdb refuses root). It listens only on a private Unix socket
directory (listen_addresses = ''), so it collides with nothing: no system service,
no TCP port. Independent of pytest, like daemonproc.py.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import uuid
from pathlib import Path

import psycopg

PASSWORD_ROLE = "totpd_pw"  # the one role that must log in with a password (scram-sha-256)


def server_bin_dir() -> Path:
    """Where initdb and pg_ctl live; a clear error when the server is not installed."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise RuntimeError(
        "PostgreSQL server programs (initdb, pg_ctl) not found: install Debian's 'postgresql' package"
        " (apt-get install postgresql); the fleet-mode tests need a real server"
    )


class PostgresCluster:
    def __init__(self, port: int = 5432) -> None:
        self.bin = server_bin_dir()
        self.port = port
        self.base = Path(tempfile.mkdtemp(prefix="totpd-pg-"))
        self.base.chmod(0o755)
        self.data = self.base / "data"
        self.sockets = self.base / "sockets"
        self.logfile = self.base / "postgres.log"
        self._as: list[str] = []
        self._owner: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            try:
                self._owner = pwd.getpwnam("postgres")
            except KeyError:
                raise RuntimeError("running as root, but there is no 'postgres' user to run the test cluster as;"
                                   " install Debian's 'postgresql' package") from None
            self._as = ["runuser", "-u", "postgres", "--"]

    # -- lifecycle ----------------------------------------------------------------------

    def _own(self, path: Path) -> None:
        if self._owner is not None:
            os.chown(path, self._owner.pw_uid, self._owner.pw_gid)

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run([*self._as, *args], capture_output=True, text=True, timeout=120, cwd=self.base)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])} failed ({result.returncode}):\n{result.stdout}{result.stderr}\n{self.log()}")
        return result

    def init(self) -> "PostgresCluster":
        for path in (self.data, self.sockets):
            path.mkdir(mode=0o700)
            self._own(path)
        self.sockets.chmod(0o755)  # the daemons under test connect as root (or another uid)
        self.logfile.touch()
        self._own(self.logfile)
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust",
                  "-E", "UTF8", "--locale=C", "--no-sync")
        (self.data / "pg_hba.conf").write_text(
            f"local all {PASSWORD_ROLE} scram-sha-256\n"
            "local all all trust\n"
        )
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(
                "\n# totpd test cluster\n"
                "listen_addresses = ''\n"
                f"unix_socket_directories = '{self.sockets}'\n"
                f"port = {self.port}\n"
                "max_connections = 300\n"
                "fsync = on\n"
                "synchronous_commit = on\n"
            )
        return self

    def start(self) -> "PostgresCluster":
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.logfile), "-w", "-t", "60", "start")
        return self

    def stop(self, mode: str = "fast") -> None:
        """`mode` as pg_ctl's -m: smart, fast, or immediate (a crash: no shutdown checkpoint)."""
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop", check=False)

    def running(self) -> bool:
        return self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "status", check=False).returncode == 0

    def destroy(self) -> None:
        if self.data.exists() and self.running():
            self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)

    def log(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    # -- freezing: a server that accepts nothing and answers nothing ------------------------

    def pids(self) -> list[int]:
        postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
        children = []
        for stat_path in glob.glob("/proc/[0-9]*/stat"):
            try:
                fields = Path(stat_path).read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == postmaster:
                children.append(int(stat_path.split("/")[2]))
        return [postmaster, *children]

    def freeze(self) -> list[int]:
        pids = self.pids()
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        return pids

    def thaw(self, pids: list[int]) -> None:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass

    # -- databases --------------------------------------------------------------------------

    def dsn(self, dbname: str = "postgres", user: str = "postgres") -> str:
        return f"host={self.sockets} port={self.port} dbname={dbname} user={user}"

    def sql(self, query: str, params: tuple = (), dbname: str = "postgres") -> list[tuple]:
        with psycopg.connect(self.dsn(dbname), autocommit=True, connect_timeout=10) as conn:
            cursor = conn.execute(query, params)  # type: ignore[arg-type]
            return cursor.fetchall() if cursor.description else []

    def create_database(self, prefix: str = "totpd") -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        self.sql(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        self.sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
