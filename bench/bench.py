#!/usr/bin/env python3
"""The totpd benchmark: PAM modules side by side, the daemon alone, scale, profile.

    sudo make bench                        # builds bench/loadgen, pamdrive, logsink; runs this
    sudo .venv/bin/python bench/bench.py [--seconds 4] [--scale 1,1000,10000,100000,1000000]
                                         [--only pam,daemon,scale,profile] [--json FILE]

One run measures everything side by side and prints one Markdown table:

1. PAM: full transactions (pam_start_confdir -> pam_authenticate -> pam_end) through
   the real libpam (bench/pamdrive, C), each answering the prompt with a fresh valid
   code, against pam_totpd, pam_google_authenticator (DISALLOW_REUSE in every secret
   file, `user=root secret=DIR/${USER}`) and pam_oath (one usersfile, which records
   the last OTP): sequential, then 8 driver processes at once, the modules taking
   turns over 4 rounds (ratios to a peer: the median of the rounds' ratios). pam_totpd
   runs twice, against a daemon with `check_accounts = false` and one with the default
   `true`, whose accounts NSS resolves (each run's accounts written to the namespace's
   own copy of /etc/passwd, as a site with local accounts has them). After
   each run every code is tried again and must be refused (no replay record lost),
   while it is still inside its time window (else the check counts as failed). Then the floor
   (bench/floor_server.py): the same 8 drivers and pam_totpd against a bare Python
   server with canned answers, without and with one fdatasync per batch, a ceiling
   for any one-process Python daemon on this machine.
2. Daemon alone (bench/loadgen, C, one epoll thread): verifications/s and p50/p99
   with 1, 16, 64, 256 connections, persistent and new-connection-per-request.
   Every request is a valid fresh code (steps now and now+1 of an account, in
   order): judge, advance the replay step, durable commit, ACCEPTED.
3. Scale: the same database grown to each --scale count (a bulk insert through
   totpd.store.sqlite with real sealing; `totpctl import tsv` would take minutes at
   1,000,000), a fresh daemon at each size: 1-client latency, 64-client throughput,
   VmRSS/VmHWM; and pam_oath's cost with a usersfile of that many accounts. Then
   the latency side by side: a daemon on a copy of each size's database, all at
   once, short 1-client runs taking turns over several rounds; the flatness target
   is judged on the medians of those rounds, not on runs minutes apart.
4. Profile: py-spy samples the daemon under the 64-connection persistent load; the
   top frames by own time.

It runs inside a private mount namespace (re-executing itself under `unshare`),
where /dev is an overlay whose /dev/log is served by bench/logsink: syslog() from
the modules and the daemon's audit lines cost one datagram, as with a real syslog
daemon, instead of glibc's fallback to /dev/console. /etc there is a copy (for the
accounts NSS resolves). The host's /dev and /etc are untouched.
Needs root (namespaces, PAM modules reading root-owned files).
"""

from __future__ import annotations

import argparse
import base64
import copy
import hashlib
import hmac
import json
import os
import platform
import re
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
sys.path[:0] = [str(REPO), str(REPO / "tests" / "helpers")]

import pyotp  # noqa: E402

from daemonproc import DaemonProcess  # noqa: E402
from totpd.identity import NAMES_TTL  # noqa: E402
from totpd.protocol import encode_request  # noqa: E402

PERIOD = 30
PAM_CONCURRENCY = 8
PAM_ROUNDS = 4  # the PAM modules take turns this many times (bench_pam)
CLIENT_COUNTS = (1, 16, 64, 256)
# The latency-versus-size comparison: 1-client runs taking turns among the sizes.
SIDE_BY_SIDE_ROUNDS = 7
SIDE_BY_SIDE_LOGINS = 150  # per size and round; at most one code per account per run
MIN_P50_SAMPLES = 500  # fewer verifications than this make no p50 worth comparing
LOADGEN, PAMDRIVE, LOGSINK = (str(BENCH / name) for name in ("loadgen", "pamdrive", "logsink"))
FLOOR_SERVER = str(BENCH / "floor_server.py")
PAM_TOTPD = str(REPO / "pam" / "pam_totpd.so")
PAM_NAMES = {7: "PAM_AUTH_ERR", 9: "PAM_AUTHINFO_UNAVAIL", 10: "PAM_USER_UNKNOWN", 11: "PAM_MAXTRIES", 4: "PAM_SYSTEM_ERR"}
DAEMON_SETTINGS = dict(
    audit="syslog", log_level="warning", check_accounts=False, max_connections=4096, max_connections_per_uid=4096,
)
# The PAM rows: pam_totpd against each daemon (check_accounts false, then true), and the peers.
PAM_MODULES = ["totpd", "totpd_nss", "google", "oath"]
PAM_LABELS = {"totpd": "pam_totpd", "totpd_nss": "pam_totpd, check_accounts = true", "google": "pam_google_authenticator",
              "oath": "pam_oath"}
OURS = ("totpd", "totpd_nss")
FIRST_BENCH_UID = 200_000


# -- accounts and codes ------------------------------------------------------------


def secret_bytes(user: str) -> bytes:
    """A deterministic 20-byte secret per account, so a million need not be kept."""
    return hashlib.sha1(b"totpd-bench:" + user.encode()).digest()


def secret_b32(user: str) -> str:
    return base64.b32encode(secret_bytes(user)).decode()


def code_at(user: str, step: int) -> str:
    """RFC 6238 with SHA1, 6 digits (hmac.digest: pyotp costs ~10x more per code;
    check_codes() proves both agree)."""
    digest = hmac.digest(secret_bytes(user), struct.pack(">Q", step), "sha1")
    offset = digest[-1] & 0x0F
    return "%06d" % ((struct.unpack(">I", digest[offset : offset + 4])[0] & 0x7FFFFFFF) % 1000000)


def check_codes() -> None:
    for user in ("bench0", "bench1"):
        for step in (1, 55_000_000):
            assert code_at(user, step) == pyotp.TOTP(secret_b32(user)).at(step * PERIOD), "code_at disagrees with pyotp"


def current_step() -> int:
    return int(time.time()) // PERIOD


def verify_frame(user: str, code: str) -> bytes:
    payload = b"verify\nuser=%s\ncode=%s\nservice=bench\n" % (user.encode(), code.encode())
    return b"TD\x01\x00" + struct.pack(">I", len(payload)) + payload


def check_frames() -> None:
    assert verify_frame("u", "123456") == encode_request("verify", {"user": "u", "code": "123456", "service": "bench"})


def bulk_enroll(daemon: DaemonProcess, first: int, count: int, prefix: str = "u") -> None:
    """Write accounts `prefix{first..first+count-1}` straight into the daemon's SQLite
    database (daemon stopped), sealed with its master key, as import_commit writes them."""
    from totpd.sealing import Sealer, load_key
    from totpd.sealing import key_check, secret_context
    from totpd.store.sqlite import SQLiteStore

    Path(daemon.settings["database"]).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    sealer = Sealer(load_key(str(daemon.settings["key_file"]), create=True))
    store = SQLiteStore(str(daemon.settings["database"]), key_check(sealer))
    now = time.time()
    try:
        for start in range(first, first + count, 50_000):
            chunk = [f"{prefix}{i}" for i in range(start, min(first + count, start + 50_000))]
            sealed = [sealer.seal(secret_bytes(user), secret_context(user)) for user in chunk]

            def write(tx, chunk=chunk, sealed=sealed) -> None:
                for user, value in zip(chunk, sealed):
                    tx.put_pending(user, value, "SHA1", 6, PERIOD, now)
                    tx.activate_pending(user, now)

            store.run(write)
    finally:
        store.close()


class Accounts:
    """The enrolled accounts `u0..u{n-1}` and the last step each has used, so every
    frame the harness writes is a code the daemon must accept."""

    def __init__(self) -> None:
        self.count = 0
        self.last: list[int] = []

    def grow(self, count: int) -> None:
        self.last += [-1] * (count - self.count)
        self.count = count

    def frames(self, path: Path, limit: int) -> list[tuple[int, int]]:
        """Write up to `limit` frames, one per account: its next unused step of now and
        now+1 (both valid for the next 30 s at least). Returns (account, the step the
        daemon will record as used) for each frame, in order.

        Never two of one account in a run: both could be in flight at once on
        different connections (a reply can lag thousands of frames behind under 256
        clients), and whichever the daemon judged second would be refused, rightly,
        as older than the step already used.

        One code in a million equals the next step's code too; the daemon then
        records the later step (otp.match_any), and that step's code, the same
        digits, is a replay from then on. So the step recorded is the later one."""
        step = current_step()
        plan: list[tuple[int, int]] = []
        frames: list[bytes] = []
        for index in range(self.count):
            if len(plan) >= limit:
                break
            use = max(step, self.last[index] + 1)
            if use <= step + 1:
                user = f"u{index}"
                code = code_at(user, use)
                plan.append((index, use + 1 if code_at(user, use + 1) == code else use))
                frames.append(verify_frame(user, code))
        with open(path, "wb") as out:
            out.write(b"".join(frames))
        return plan

    def consumed(self, plan: list[tuple[int, int]], requests: int) -> None:
        for index, used in plan[:requests]:
            self.last[index] = max(self.last[index], used)


# -- processes ---------------------------------------------------------------------


def parse_kv(line: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in line.split() if "=" in part)


def loadgen(socket_path: str, frames: Path, connections: int, mode: str, seconds: float) -> dict:
    out = subprocess.run([LOADGEN, socket_path, str(frames), str(connections), mode, str(seconds)],
                         capture_output=True, text=True, timeout=seconds + 120)
    if out.returncode != 0:
        raise SystemExit(f"loadgen failed ({out.returncode}): {out.stderr.strip()}")
    fields = parse_kv(out.stdout.strip().splitlines()[-1])
    result = {key: float(value) for key, value in fields.items() if not key.startswith("status.")}
    result["refused"] = {key[7:]: int(value) for key, value in fields.items() if key.startswith("status.")}
    return result


def memory(pid: int) -> dict[str, float]:
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            values[line.split(":")[0]] = int(line.split()[1]) / 1024  # MB
    return values


def drive(name: str, confdir: Path, codes: Path, processes: int, keep_latencies: bool = False) -> dict:
    """Run pamdrive (one or several processes sharing `codes`); merge their results
    (with every transaction's latency in `latencies_us` if `keep_latencies`)."""
    start_ns = time.clock_gettime_ns(time.CLOCK_MONOTONIC) + (300_000_000 if processes > 1 else 0)
    procs = [subprocess.Popen([PAMDRIVE, name, str(confdir), str(codes), str(i), str(processes), str(start_ns)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(processes)]
    latencies: list[float] = []
    refused: dict[str, int] = {}
    refused_users: list[str] = []
    t0, t1, total, ok = [], [], 0, 0
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=600)
        if proc.returncode != 0:
            raise SystemExit(f"pamdrive {name} failed: {stderr.strip()}")
        for line in stdout.splitlines():
            if line.startswith("refused "):
                _, user, ret = line.split()
                refused_users.append(user)
                key = PAM_NAMES.get(int(ret), f"ret {ret}")
                refused[key] = refused.get(key, 0) + 1
            elif line.startswith("latencies_us="):
                latencies += [float(v) for v in line[13:].split(",") if v]
            elif line.startswith("transactions="):
                fields = parse_kv(line)
                total += int(fields["transactions"])
                ok += int(fields["ok"])
                t0.append(int(fields["t0_ns"]))
                t1.append(int(fields["t1_ns"]))
    elapsed = (max(t1) - min(t0)) / 1e9
    return {
        "transactions": total, "ok": ok, "refused": refused, "refused_users": refused_users,
        "per_second": total / elapsed, "seconds": elapsed, **percentiles(latencies),
        **({"latencies_us": latencies} if keep_latencies else {}),
    }


def percentiles(latencies_us: list[float]) -> dict[str, float]:
    ordered = sorted(latencies_us)
    return {"p50_ms": statistics.median(ordered) / 1000,
            "p99_ms": ordered[min(len(ordered) - 1, len(ordered) * 99 // 100)] / 1000}


# -- 1. PAM modules side by side ---------------------------------------------------


def oath_line(user: str) -> str:
    return f"HOTP/T30 {user} - {secret_bytes(user).hex()}\n"


class Passwd:
    """The namespace's /etc/passwd: the host's entries, then one run's accounts.

    /etc is a copy bound over /etc as a whole, never a single file: a host process that
    renames a new /etc/passwd into place (useradd, dpkg) would detach a file's bind.
    Each run replaces the previous run's accounts, so a lookup reads as much of the
    file as a site with that many local accounts does."""

    def __init__(self, top: Path) -> None:
        copy_of_etc = top / "etc"
        subprocess.run(["cp", "-a", "/etc", str(copy_of_etc)], check=True)
        subprocess.run(["mount", "--bind", str(copy_of_etc), "/etc"], check=True)
        self.path = copy_of_etc / "passwd"
        self.host = self.path.read_text()

    def publish(self, users: list[str]) -> None:
        self.path.write_text(self.host + "".join(
            f"{user}:x:{FIRST_BENCH_UID + i}:{FIRST_BENCH_UID + i}::/nonexistent:/usr/sbin/nologin\n"
            for i, user in enumerate(users)))

    @staticmethod
    def resolve_us(users: list[str]) -> float:
        """CPU microseconds NSS itself takes to resolve one of `users` to its canonical
        name (identity.account, here, with no worker): the part of check_accounts'
        cost that is the directory's, not the daemon's."""
        from totpd import identity

        start = time.process_time()
        for user in users:
            found = identity.account(user)
            if found is None or found[0] != user:
                raise SystemExit(f"NSS does not resolve the bench account {user}")
        return (time.process_time() - start) / len(users) * 1e6


class PamModules:
    """Four PAM services in one private confdir, each with its own fresh accounts."""

    def __init__(self, top: Path, daemon: DaemonProcess, nss_daemon: DaemonProcess, passwd: Passwd) -> None:
        self.top = top
        self.daemons = {"totpd": daemon, "totpd_nss": nss_daemon}
        self.passwd = passwd
        self.confdir = top / "pam.d"
        self.ga_dir = top / "ga"
        top.mkdir(mode=0o755)
        self.ga_dir.mkdir(mode=0o700)
        self.oath_file = top / "oath" / "users.oath"
        self.oath_file.parent.mkdir(mode=0o700)
        self.confdir.mkdir()
        stacks = {
            "totpd": f"auth required {PAM_TOTPD} socket={daemon.socket_path}",
            "totpd_nss": f"auth required {PAM_TOTPD} socket={nss_daemon.socket_path}",
            "google": f"auth required pam_google_authenticator.so user=root secret={self.ga_dir}/${{USER}}",
            "oath": f"auth required pam_oath.so usersfile={self.oath_file} window=1",
            "floor": f"auth required {PAM_TOTPD} socket={top / 'floor.sock'}",
        }
        for service, line in stacks.items():
            (self.confdir / service).write_text(line + "\n")
        (self.confdir / "other").write_text("auth required pam_deny.so\naccount required pam_deny.so\n")
        self.serial = 0
        self.disk: list[float] = []  # fsync_probe before each round of bench_pam

    def provision(self, module: str, count: int) -> list[str]:
        """Fresh accounts for one run: totpd through `totpctl import tsv` (and in /etc/passwd
        for the daemon that resolves them), google-authenticator one secret file each
        (DISALLOW_REUSE), pam_oath one usersfile."""
        self.serial += 1
        users = [f"p{self.serial}x{i}" for i in range(count)]
        if module in self.daemons:
            if module == "totpd_nss":
                self.passwd.publish(users)
            tsv = self.top / "accounts.tsv"
            tsv.write_text("".join(f"{user}\t{secret_b32(user)}\n" for user in users))
            result = self.daemons[module].ctl("import", "tsv", str(tsv), timeout=600)
            tsv.unlink()
            if result.returncode != 0:
                raise SystemExit(f"totpctl import tsv failed: {result.stderr.strip()}")
        elif module == "google":
            for user in users:
                path = self.ga_dir / user
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                os.write(fd, f'{secret_b32(user)}\n" TOTP_AUTH\n" DISALLOW_REUSE\n" WINDOW_SIZE 3\n'.encode())
                os.close(fd)
        else:
            fd = os.open(self.oath_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.write(fd, "".join(oath_line(user) for user in users).encode())
            os.close(fd)
        # Written back now, not by the kernel during the timed run: google-authenticator's
        # thousand fresh secret files would otherwise be flushed while it logs in.
        os.sync()
        return users

    def run(self, module: str, count: int, processes: int) -> dict:
        users = self.provision(module, count)
        if module == "totpd_nss":
            # The import's own requests left these names in the daemon's memo of canonical
            # names (identity.Names): a login must find it cold, as a person's does.
            time.sleep(NAMES_TTL)
        step = current_step()  # a code for `step` stays valid until step + 1 ends
        codes = self.top / "codes.txt"
        codes.write_text("".join(f"{user} {code_at(user, step)}\n" for user in users))
        daemon = self.daemons.get(module)
        before = cpu_seconds(daemon.process.pid) if daemon else 0.0
        result = drive(module, self.confdir, codes, processes, keep_latencies=True)
        result["server_cpu_s"] = cpu_seconds(daemon.process.pid) - before if daemon else 0.0
        if module == "totpd_nss":
            result["nss_resolve_us"] = self.passwd.resolve_us(users)
        # Every code that was accepted must now be refused (its replay record survived);
        # codes the module refused in the run (pam_oath's lock contention) were never used.
        refused = set(result["refused_users"])
        used = [user for user in users if user not in refused]
        codes.write_text("".join(f"{user} {code_at(user, step)}\n" for user in used))
        replay = drive(module, self.confdir, codes, 1) if used else {"ok": 0}
        in_window = current_step() <= step + 1
        result["replayed_accepted"] = replay["ok"]
        result["replayed"] = len(used)
        result["replay_checked"] = in_window
        result["accounts"] = count
        return result


def bench_pam(modules: PamModules, sequential: int, concurrent: int, rounds: int = PAM_ROUNDS) -> list[dict]:
    """Every module's transactions in `rounds` turns (the modules' order rotated each
    round), so that a machine whose speed drifts over minutes weighs on each module
    alike; a row pools its rounds (pool), and a ratio to a peer is the median of the
    per-round ratios (round_ratio)."""
    parts: dict[tuple[str, int], list[dict]] = {}
    names = PAM_MODULES
    for number in range(rounds):
        modules.disk.append(fsync_probe(modules.top))
        for module in names[number % len(names):] + names[:number % len(names)]:
            for processes, count in ((1, sequential), (PAM_CONCURRENCY, concurrent)):
                share = count // rounds + (1 if number < count % rounds else 0)
                row = modules.run(module, share, processes)
                parts.setdefault((module, processes), []).append(row)
                print(f"PAM round {number + 1} {module:<9} clients={processes}: {row['per_second']:7.0f}/s"
                      f" p50 {row['p50_ms']:.2f} ms p99 {row['p99_ms']:.2f} ms ok {row['ok']}/{row['transactions']}"
                      f" refused {row['refused']} replay-accepted {row['replayed_accepted']}"
                      f"{'' if row['replay_checked'] else ' (replay check late!)'}", flush=True)
    return [pool(module, clients, parts[(module, clients)]) for module in names for clients in (1, PAM_CONCURRENCY)]


def fsync_probe(directory: Path, count: int = 50) -> float:
    """The disk's state now: the median microseconds of a 4 KiB pwrite + fdatasync.
    On this shared machine it moves 2-3x over minutes (busy neighbours, write-back
    after large writes), and google-authenticator, one fsync per login, feels it more
    than a daemon with one per batch of logins."""
    path = directory / "fsync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    block, times = bytes(4096), []
    try:
        for index in range(count):
            start = time.perf_counter_ns()
            os.pwrite(fd, block, (index % 16) * 4096)
            os.fdatasync(fd)
            times.append((time.perf_counter_ns() - start) / 1000)
    finally:
        os.close(fd)
        path.unlink()
    return statistics.median(times)


def pool(module: str, clients: int, rounds: list[dict]) -> dict:
    """One row from a module's rounds: counts summed, p50/p99 over every transaction,
    logins/s over the rounds' summed time, and each round's own p50 and logins/s."""
    refused: dict[str, int] = {}
    for row in rounds:
        for key, value in row["refused"].items():
            refused[key] = refused.get(key, 0) + value
    total = {key: sum(row[key] for row in rounds)
             for key in ("transactions", "ok", "seconds", "replayed", "replayed_accepted", "accounts", "server_cpu_s")}
    return {
        "module": module, "clients": clients, **total, "refused": refused,
        "per_second": total["transactions"] / total["seconds"],
        **percentiles([latency for row in rounds for latency in row["latencies_us"]]),
        "replay_checked": all(row["replay_checked"] for row in rounds),
        "rounds": [{"per_second": row["per_second"], "p50_ms": row["p50_ms"]} for row in rounds],
        **({"nss_resolve_us": statistics.median(row["nss_resolve_us"] for row in rounds)} if "nss_resolve_us" in rounds[0] else {}),
    }


def cpu_seconds(pid: int) -> float:
    """User plus system CPU a process has used so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_per_login_us(row: dict) -> float:
    return row["server_cpu_s"] / row["transactions"] * 1e6


def round_ratio(base: dict, peer: dict, key: str) -> float:
    """The median over rounds of base's `key` divided by peer's in the same round."""
    return statistics.median(b[key] / p[key] for b, p in zip(base["rounds"], peer["rounds"]))


def bench_floor(modules: PamModules, count: int) -> list[dict]:
    """8 PAM clients against bench/floor_server.py: canned answers, then with a group
    commit, then that on asyncio with a task per verification, then totpd/server.py
    itself in front of a canned service with that group commit."""
    rows = []
    for durable, on_asyncio in ((False, False), (True, False), (True, True), (True, "totpd")):
        command = [sys.executable, FLOOR_SERVER, str(modules.top / "floor.sock")]
        if durable:
            command += ["--durable", str(modules.top / "floor.log")]
        if on_asyncio:
            command += ["--totpd-server" if on_asyncio == "totpd" else "--asyncio"]
        server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        try:
            server.stdout.readline()
            codes = modules.top / "codes.txt"
            codes.write_text("".join(f"f{index} {code_at(f'f{index}', current_step())}\n" for index in range(count)))
            before = cpu_seconds(server.pid)
            row = drive("floor", modules.confdir, codes, PAM_CONCURRENCY)
            row["server_cpu_s"] = cpu_seconds(server.pid) - before
        finally:
            server.kill()
            server.wait()
            os.unlink(modules.top / "floor.sock")
        row.update(module="floor", durable=durable, asyncio=on_asyncio, clients=PAM_CONCURRENCY)
        rows.append(row)
        print(f"PAM floor {floor_label(row):<40} clients={PAM_CONCURRENCY}: {row['per_second']:7.0f}/s"
              f" p50 {row['p50_ms']:.2f} ms, {cpu_per_login_us(row):.0f} us CPU per login,"
              f" ok {row['ok']}/{row['transactions']}", flush=True)
    return rows


def floor_label(row: dict) -> str:
    if row.get("asyncio") == "totpd":
        return "totpd/server.py, a canned service, fdatasync per batch"
    return ("fdatasync per batch" if row["durable"] else "canned") + (", asyncio and a task each" if row.get("asyncio") else "")


# -- 2-4. the daemon alone, scale, profile -----------------------------------------


def daemon_run(daemon: DaemonProcess, accounts: Accounts, top: Path, connections: int, mode: str,
               seconds: float, limit: int | None = None) -> dict:
    """One loadgen run over fresh codes; at most `limit` frames (default: enough for
    30,000/s, above the target, for `seconds`)."""
    frames = top / "frames.bin"
    plan = accounts.frames(frames, limit or int(30_000 * seconds))
    if not plan:
        raise SystemExit("no account has an unused step left; enlarge --scale")
    result = loadgen(daemon.socket_path, frames, connections, mode, seconds)
    accounts.consumed(plan, int(result["requests"]))
    result["exhausted"] = int(result["requests"]) == len(plan) and result["seconds"] < seconds * 0.95
    frames.unlink()
    return result


def show(label: str, row: dict) -> None:
    print(f"{label}: {row['per_second']:8.0f}/s p50 {row.get('p50_us', 0) / 1000:.3f} ms"
          f" p99 {row.get('p99_us', 0) / 1000:.3f} ms  n={int(row['requests'])} refused={row['refused']}"
          + (" (ran out of frames)" if row.get("exhausted") else ""), flush=True)


def bench_scale(top: Path, daemon: DaemonProcess, accounts: Accounts, sizes: list[int], seconds: float,
                pam: PamModules | None) -> tuple[list[dict], list[dict]]:
    """Each size in turn, then the side-by-side latency rounds (side_by_side)."""
    rows = []
    copies: list[tuple[int, DaemonProcess, Accounts]] = []
    for size in sizes:
        daemon.stop()
        if accounts.count >= MIN_P50_SAMPLES:  # keep the previous size's database for side_by_side
            workdir = top / f"scale-{accounts.count}"
            shutil.copytree(Path(daemon.settings["database"]).parent, workdir / "state")
            copies.append((accounts.count, DaemonProcess(workdir, **DAEMON_SETTINGS), copy.deepcopy(accounts)))
        started = time.monotonic()
        bulk_enroll(daemon, accounts.count, size - accounts.count)
        accounts.grow(size)
        fill = time.monotonic() - started
        os.sync()  # the copy above (copytree does not sync) written back now, not during the runs that follow
        daemon.start(timeout=60)
        # one code per account for the 1-client run, so the 64-client run still has
        # fresh codes (the next step) at every size
        one = daemon_run(daemon, accounts, top, 1, "persistent", min(seconds, 2.0), limit=min(size, 3000))
        many = daemon_run(daemon, accounts, top, 64, "persistent", seconds)
        mem = memory(daemon.process.pid)
        row = {"accounts": size, "one": one, "many": many, "fill_s": fill, **mem}
        if pam is not None:
            row["oath"] = oath_at_scale(pam, size)
        rows.append(row)
        show(f"scale {size:>8} accounts, 1 client ", one)
        show(f"scale {size:>8} accounts, 64 clients", many)
        print(f"scale {size:>8} accounts: VmRSS {mem['VmRSS']:.1f} MB VmHWM {mem['VmHWM']:.1f} MB"
              f" (bulk insert {fill:.1f} s)" + (f"; pam_oath p50 {row['oath']['p50_ms']:.2f} ms" if pam else ""), flush=True)
    if accounts.count >= MIN_P50_SAMPLES:
        copies.append((accounts.count, daemon, accounts))
    return rows, side_by_side(top, copies)


def side_by_side(top: Path, sizes: list[tuple[int, DaemonProcess, Accounts]]) -> list[dict]:
    """1-client latency at every size, measured in turns: a daemon per size, all
    running, SIDE_BY_SIDE_ROUNDS rounds of one short run each (in a rotated order),
    the median of each size's per-round p50s. Runs minutes apart on a shared machine
    differ by more than 20% with no change at all (docs/performance.md)."""
    started = []
    try:
        for _, daemon, _ in sizes:
            if daemon.process is None or daemon.process.poll() is not None:
                daemon.start(timeout=60)
                started.append(daemon)
        p50s: dict[int, list[float]] = {size: [] for size, _, _ in sizes}
        requests = dict.fromkeys(p50s, 0)
        for number in range(SIDE_BY_SIDE_ROUNDS):
            turn = sizes[number % len(sizes):] + sizes[:number % len(sizes)]
            for size, daemon, accounts in turn:
                result = daemon_run(daemon, accounts, top, 1, "persistent", 2.0,
                                    limit=min(SIDE_BY_SIDE_LOGINS, size // SIDE_BY_SIDE_ROUNDS))
                if result["refused"]:
                    raise SystemExit(f"side by side, {size:,} accounts: refused {result['refused']}")
                p50s[size].append(result["p50_us"])
                requests[size] += int(result["requests"])
    finally:
        for daemon in started:
            daemon.stop()
    rows = [{"accounts": size, "p50_us": statistics.median(p50s[size]), "rounds": p50s[size],
             "requests": requests[size]} for size, _, _ in sizes]
    for row in rows:
        print(f"side by side {row['accounts']:>8} accounts, 1 client: p50 {row['p50_us'] / 1000:.3f} ms"
              f" (median of {len(row['rounds'])} rounds, n={row['requests']})", flush=True)
    return rows


def flatness(rows: list[dict]) -> tuple[str, str, bool] | None:
    """The target 'latency flat within 20% from the smallest to the largest size', on
    the side-by-side medians of the sizes with enough verifications for a p50."""
    sized = [row for row in rows if row["requests"] >= MIN_P50_SAMPLES]
    if len(sized) < 2:
        return None
    p50s = [row["p50_us"] for row in sized]
    spread = max(p50s) / min(p50s) - 1
    return (f"1-client p50 flat within 20% from {sized[0]['accounts']:,} to {sized[-1]['accounts']:,} accounts"
            " (side by side, medians)",
            f"{min(p50s) / 1000:.3f}..{max(p50s) / 1000:.3f} ms (+{spread:.0%});"
            f" {sized[-1]['accounts']:,} vs {sized[0]['accounts']:,}: {p50s[-1] / p50s[0]:.2f}x",
            spread <= 0.20)


def oath_at_scale(pam: PamModules, size: int) -> dict:
    """pam_oath with a usersfile of `size` accounts: a few logins (it rewrites the file each time)."""
    logins = min(size, 200 if size <= 10_000 else 20 if size <= 100_000 else 5)
    fd = os.open(pam.oath_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        for start in range(0, size, 100_000):
            out.write("".join(oath_line(f"o{i}") for i in range(start, min(size, start + 100_000))))
    os.sync()
    step = current_step()
    codes = pam.top / "codes.txt"
    # spread the logins over the file: the cost of finding a user depends on where it is
    picks = sorted({(i * size) // logins for i in range(logins)})
    codes.write_text("".join(f"o{i} {code_at(f'o{i}', step)}\n" for i in picks))
    result = drive("oath", pam.confdir, codes, 1)
    pam.oath_file.unlink()
    return result


def profile(daemon: DaemonProcess, accounts: Accounts, top: Path, seconds: float,
            gil: bool = False) -> tuple[dict, list[tuple[str, float]]]:
    """py-spy on the daemon under 64 persistent clients: every thread's samples (where
    wall time goes, fsync included), or with `gil` only the thread holding the GIL
    (where the Python CPU goes, the limit on throughput)."""
    raw = top / "profile.txt"
    spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(daemon.process.pid),
                            "--format", "raw", "--output", str(raw), "--duration", str(int(seconds) + 1),
                            "--rate", "250", "--nonblocking", *(["--gil"] if gil else ["--threads"])],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    result = daemon_run(daemon, accounts, top, 64, "persistent", seconds)
    _, err = spy.communicate(timeout=120)
    if spy.returncode != 0 or not raw.exists():
        raise SystemExit(f"py-spy failed: {err.strip()}")
    own: dict[str, int] = {}
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        # the leaf frame is where the time was spent; drop its line number so a
        # function's lines add up ("name (file.py:123)" -> "name (file.py)")
        leaf = re.sub(r":\d+\)$", ")", stack.split(";")[-1])
        own[leaf] = own.get(leaf, 0) + int(count)
        total += int(count)
    shutil.copy(raw, BENCH / ("profile-gil-latest.txt" if gil else "profile-latest.txt"))
    top_frames = sorted(own.items(), key=lambda item: -item[1])[:15]
    return result, [(frame, 100.0 * count / total) for frame, count in top_frames]


# -- the run -----------------------------------------------------------------------


def fmt_ms(us: float) -> str:
    return f"{us / 1000:.2f} ms"


def report(args: argparse.Namespace, pam_rows: list[dict], floor: list[dict], matrix: list[dict], scale: list[dict],
           side: list[dict], disk: dict[str, list[float]], prof: tuple[dict, list] | None) -> bool:
    """Print the one table (Markdown) and the targets; True when every run was clean."""
    clean = True
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    print(f"\n## totpd benchmark — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n")
    print(f"{os.cpu_count()} CPUs ({cpu}), Linux {platform.release()}, Python {platform.python_version()};"
          f" load generators share the CPUs.\n")
    print("| what | clients | per second | p50 | p99 | not accepted / refused | notes |")
    print("|------|---------|-----------:|----:|----:|------------------------|-------|")
    by = {(row["module"], row["clients"]): row for row in pam_rows}
    for row in pam_rows:
        lost = row["replayed_accepted"]
        if row["module"] in OURS:  # a peer's refusals and lost replays are findings
            clean &= lost == 0 and row["replay_checked"]
        note = f"{row['accounts']} accounts; {row['replayed']} accepted codes replayed, accepted again: {lost}" + ("" if row["replay_checked"] else " (LATE)")
        if row["module"] not in OURS and ("totpd", row["clients"]) in by:
            base = by[("totpd", row["clients"])]
            note += (f"; totpd p50 = {round_ratio(base, row, 'p50_ms'):.2f}x, "
                     f"logins/s = {round_ratio(base, row, 'per_second'):.2f}x (medians of {len(row['rounds'])} rounds' ratios)")
        if row["module"] == "totpd_nss" and ("totpd", row["clients"]) in by:
            note += (f"; {cpu_per_login_us(row):.0f} us CPU per login; vs check_accounts = false:"
                     f" p50 = {round_ratio(row, by[('totpd', row['clients'])], 'p50_ms'):.2f}x,"
                     f" logins/s = {round_ratio(row, by[('totpd', row['clients'])], 'per_second'):.2f}x;"
                     f" NSS itself {row['nss_resolve_us']:.0f} us CPU per name resolved (bench.Passwd.resolve_us)")
        elif row["module"] == "totpd":
            note += f"; check_accounts = false; {cpu_per_login_us(row):.0f} us CPU per login"
        refused = row["transactions"] - row["ok"]
        if row["module"] in OURS:
            clean &= refused == 0
        print(f"| PAM {PAM_LABELS[row['module']]} | {row['clients']} |"
              f" {row['per_second']:,.0f} | {row['p50_ms']:.2f} ms | {row['p99_ms']:.2f} ms |"
              f" {refused} {json.dumps(row['refused']) if refused else ''} | {note} |")
    for row in floor:
        what = "PAM floor: Python, " + floor_label(row)
        note = (f"bench/floor_server.py: no store, no crypto, no audit; a ceiling, not a module;"
                f" {cpu_per_login_us(row):.0f} us CPU per login")
        if ("google", row["clients"]) in by:
            note += f"; logins/s = {row['per_second'] / by[('google', row['clients'])]['per_second']:.2f}x google-authenticator"
        print(f"| {what} | {row['clients']} | {row['per_second']:,.0f} | {row['p50_ms']:.2f} ms | {row['p99_ms']:.2f} ms |"
              f" {row['transactions'] - row['ok']} | {note} |")
    for row in matrix:
        bad = sum(row["refused"].values())
        clean &= bad == 0 and not row.get("exhausted")
        print(f"| daemon, {row['mode']} connections | {row['clients']} | {row['per_second']:,.0f} |"
              f" {fmt_ms(row['p50_us'])} | {fmt_ms(row['p99_us'])} | {bad} {json.dumps(row['refused']) if bad else ''} |"
              f" {row['accounts']:,} accounts{' (ran out of frames)' if row.get('exhausted') else ''} |")
    for row in scale:
        for key, clients in (("one", 1), ("many", 64)):
            r = row[key]
            bad = sum(r["refused"].values())
            clean &= bad == 0
            note = f"{row['accounts']:,} accounts"
            if key == "many":
                note += f"; daemon VmRSS {row['VmRSS']:.0f} MB, VmHWM {row['VmHWM']:.0f} MB"
            print(f"| scale, persistent | {clients} | {r['per_second']:,.0f} | {fmt_ms(r['p50_us'])} |"
                  f" {fmt_ms(r['p99_us'])} | {bad} | {note} (n={int(r['requests'])}) |")
        if "oath" in row:
            o = row["oath"]
            print(f"| scale, PAM pam_oath | 1 | {o['per_second']:,.1f} | {o['p50_ms']:.2f} ms | {o['p99_ms']:.2f} ms |"
                  f" {o['transactions'] - o['ok']} | usersfile of {row['accounts']:,} accounts (n={o['transactions']}) |")
    for row in side:
        rounds = ", ".join(f"{p50 / 1000:.2f}" for p50 in row["rounds"])
        print(f"| scale, side by side, persistent | 1 | | {fmt_ms(row['p50_us'])} | | 0 |"
              f" {row['accounts']:,} accounts; median of {len(row['rounds'])} rounds' p50s ({rounds} ms; n={row['requests']}) |")
    if prof:
        r = prof[0]
        print(f"| profiled run (py-spy attached) | 64 | {r['per_second']:,.0f} | {fmt_ms(r['p50_us'])} |"
              f" {fmt_ms(r['p99_us'])} | {sum(r['refused'].values())} | not a measurement |")

    print("\n### Targets\n")
    checks = []
    if ("totpd", 1) in by and ("google", 1) in by:
        ratio = round_ratio(by[("totpd", 1)], by[("google", 1)], "p50_ms")
        checks.append(("PAM p50 vs google-authenticator <= 0.9x (median of the rounds' ratios)", f"{ratio:.2f}x",
                       ratio <= 0.9))
    if ("totpd", 8) in by and ("google", 8) in by:
        t, g = by[("totpd", 8)], by[("google", 8)]
        ratio = round_ratio(t, g, "per_second")
        checks.append(("8 PAM clients: logins/s vs google-authenticator >= 1.3x (median of the rounds' ratios)",
                       f"{ratio:.2f}x", ratio >= 1.3))
        ours = [by[(module, 8)] for module in OURS if (module, 8) in by]
        refused, replays = (sum(row["transactions"] - row["ok"] for row in ours), sum(row["replayed_accepted"] for row in ours))
        checks.append(("8 PAM clients: no valid code refused, no replay accepted (check_accounts false and true)",
                       f"{refused} refused, {replays} replays",
                       refused == 0 and replays == 0 and all(row["replay_checked"] for row in ours)))
    if all((module, clients) in by for module in OURS for clients in (1, PAM_CONCURRENCY)):
        slower = round_ratio(by[("totpd_nss", 1)], by[("totpd", 1)], "p50_ms")
        fewer = round_ratio(by[("totpd", PAM_CONCURRENCY)], by[("totpd_nss", PAM_CONCURRENCY)], "per_second")
        checks.append(("check_accounts = true (accounts in /etc/passwd) within 1.1x of false: 1-client p50,"
                       " and 8 clients' logins/s (medians of the rounds' ratios)",
                       f"p50 {slower:.2f}x, logins/s {1 / fewer:.2f}x", slower <= 1.1 and fewer <= 1.1))
    for row in matrix:
        if row["clients"] == 64:
            need = 15_000 if row["mode"] == "persistent" else 10_000
            checks.append((f"daemon, 64 clients, {row['mode']}: >= {need:,}/s, p99 < 10 ms",
                           f"{row['per_second']:,.0f}/s, p99 {fmt_ms(row['p99_us'])}",
                           row["per_second"] >= need and row["p99_us"] < 10_000))
    durable_floor = next((row for row in floor if row["durable"] and not row.get("asyncio")), None)
    if ("totpd", 8) in by and durable_floor is not None:
        daemon_us, floor_us = cpu_per_login_us(by[("totpd", 8)]), cpu_per_login_us(durable_floor)
        checks.append(("8 PAM clients: the daemon's CPU per login <= 2.5x the floor server's with fdatasync (/proc)",
                       f"{daemon_us:.0f} us vs {floor_us:.0f} us ({daemon_us / floor_us:.2f}x)", daemon_us <= 2.5 * floor_us))
    if flat := flatness(side):
        checks.append(flat)
    if scale:
        last = scale[-1]
        checks.append((f"RSS < 100 MB at {last['accounts']:,} accounts", f"VmHWM {last['VmHWM']:.0f} MB", last["VmHWM"] < 100))
    for name, value, met in checks:
        print(f"- {'MET ' if met else 'MISSED'} {name}: {value}")
    for row in floor:
        if row["durable"] and not row.get("asyncio") and ("google", row["clients"]) in by:
            ratio = row["per_second"] / by[("google", row["clients"])]["per_second"]
            print(f"- ceiling, {row['clients']} PAM clients: a bare Python server with one fdatasync per batch"
                  f" (bench/floor_server.py) made {ratio:.2f}x google-authenticator's logins/s in this run")
    on_loop = next((row for row in floor if row.get("asyncio") is True), None)
    socket_layer = next((row for row in floor if row.get("asyncio") == "totpd"), None)
    if ("totpd", 8) in by and durable_floor is not None and on_loop is not None and socket_layer is not None:
        daemon_us = cpu_per_login_us(by[("totpd", 8)])
        print(f"- CPU per login, {PAM_CONCURRENCY} PAM clients (/proc): the floor with fdatasync"
              f" {cpu_per_login_us(durable_floor):.0f} us, the same on asyncio with a task per verification"
              f" {cpu_per_login_us(on_loop):.0f} us, totpd/server.py with a canned service"
              f" {cpu_per_login_us(socket_layer):.0f} us, totpd {daemon_us:.0f} us"
              f" (its service's work: {daemon_us - cpu_per_login_us(socket_layer):.0f} us)")
    for phase, label in (("pam", "before each PAM round"), ("daemon", "before the daemon runs")):
        if disk.get(phase):
            print(f"- the disk {label}: 4 KiB pwrite + fdatasync, median"
                  f" {', '.join(f'{us:.0f}' for us in disk[phase])} us (bench.fsync_probe)")
    for row in pam_rows:
        if row["module"] not in OURS and (row["ok"] < row["transactions"] or row["replayed_accepted"]):
            print(f"- peer pam_{row['module']}, {row['clients']} client(s): {row['transactions'] - row['ok']} of"
                  f" {row['transactions']} valid codes refused; {row['replayed_accepted']} of {row['replayed']}"
                  " accepted codes accepted again (replay records lost)")
    if prof:
        for title, frames in (("all threads", prof[1]), ("thread holding the GIL, --gil", prof[2])):
            print(f"\n### Daemon profile, top frames by own time (py-spy, 64 persistent clients, {title})\n")
            for frame, share in frames:
                print(f"- {share:5.1f}%  {frame}")
    if not clean:
        print("\nNOT CLEAN: a valid code was refused, a replay was accepted, or a run ran out of frames", file=sys.stderr)
    return clean


def inside(args: argparse.Namespace) -> int:
    """The benchmark proper, in the private mount namespace."""
    top = Path(args.inside)
    for tool in (LOADGEN, PAMDRIVE, LOGSINK):
        if not os.access(tool, os.X_OK):
            raise SystemExit(f"{tool} is missing: run `make bench` (it builds bench/*.c)")
    # /dev as an overlay (only in this namespace): /dev/log is ours, the host's /dev is untouched.
    (top / "dev-upper").mkdir()
    (top / "dev-work").mkdir()
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir=/dev,upperdir={top / 'dev-upper'},workdir={top / 'dev-work'}", "/dev"], check=True)
    sink = subprocess.Popen([LOGSINK, "/dev/log"], stdout=subprocess.PIPE, text=True)
    sink.stdout.readline()
    check_codes()
    check_frames()
    only = set(args.only.split(","))
    sizes = [int(size) for size in args.scale.split(",")]
    pam_rows, floor, matrix, scale, side, prof = [], [], [], [], [], None
    disk: dict[str, list[float]] = {}  # fsync_probe medians, before each PAM round and the daemon runs
    daemons: list[DaemonProcess] = []
    try:
        pam = None
        if "pam" in only or "scale" in only:
            passwd = Passwd(top)
            pam_daemon = DaemonProcess(top / "pamdaemon", **DAEMON_SETTINGS).start()
            nss_daemon = DaemonProcess(top / "nssdaemon", **{**DAEMON_SETTINGS, "check_accounts": True}).start()
            daemons += [pam_daemon, nss_daemon]
            pam = PamModules(top / "pam", pam_daemon, nss_daemon, passwd)
            if "pam" in only:
                pam_rows = bench_pam(pam, args.pam_sequential, args.pam_concurrent)
                disk["pam"] = pam.disk
                floor = bench_floor(pam, args.pam_concurrent)
            pam_daemon.stop()
            nss_daemon.stop()
        daemon = DaemonProcess(top / "daemon", **DAEMON_SETTINGS)
        daemons.append(daemon)
        accounts = Accounts()
        if "scale" in only:
            scale, side = bench_scale(top, daemon, accounts, sizes, args.seconds, pam)
        elif only & {"daemon", "profile"}:  # `--only pam` needs no million accounts
            bulk_enroll(daemon, 0, sizes[-1])
            accounts.grow(sizes[-1])
            daemon.start(timeout=60)
        if "daemon" in only:
            disk["daemon"] = [fsync_probe(top)]
            for mode in ("persistent", "new"):
                for clients in CLIENT_COUNTS:
                    row = daemon_run(daemon, accounts, top, clients, mode, args.seconds)
                    row.update(mode=mode, clients=clients, accounts=accounts.count)
                    matrix.append(row)
                    show(f"daemon {mode:<10} {clients:>3} clients", row)
        if "profile" in only:
            prof = profile(daemon, accounts, top, args.seconds)
            prof = (prof[0], prof[1], profile(daemon, accounts, top, args.seconds, gil=True)[1])
    finally:
        for d in daemons:
            d.stop()
        sink.terminate()
        absorbed = sink.communicate()[0].strip()
    print(f"\n/dev/log (bench/logsink) absorbed {absorbed.split('=')[-1]} syslog messages")
    clean = report(args, pam_rows, floor, matrix, scale, side, disk, prof)
    if args.json:
        Path(args.json).write_text(json.dumps({"pam": pam_rows, "floor": floor, "daemon": matrix, "scale": scale,
                                               "side_by_side": side, "disk_fsync_us": disk,
                                               "profile": prof[1:] if prof else None}, indent=1, default=str))
    return 0 if clean else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each daemon run (default 4)")
    parser.add_argument("--scale", default="1,1000,10000,100000,1000000", help="account counts, increasing")
    parser.add_argument("--only", default="pam,daemon,scale,profile", help="sections to run")
    parser.add_argument("--pam-sequential", type=int, default=2000, help="sequential PAM transactions per module")
    parser.add_argument("--pam-concurrent", type=int, default=4000, help="PAM transactions over 8 processes per module")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--inside", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inside:
        return inside(args)
    if os.geteuid() != 0:
        raise SystemExit("bench.py needs root (a private mount namespace, PAM modules reading root-owned files)")
    top = Path(tempfile.mkdtemp(prefix="totpd-bench-"))
    top.chmod(0o755)
    try:
        command = ["unshare", "--mount", "--propagation", "private", "--", sys.executable, *sys.argv, "--inside", str(top)]
        return subprocess.run(command).returncode
    finally:
        # The namespace (and the /dev overlay in it) is gone; nothing is mounted below top.
        subprocess.run(["rm", "-rf", "--one-file-system", str(top)], check=False)


if __name__ == "__main__":
    sys.exit(main())
