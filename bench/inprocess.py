#!/usr/bin/env python3
"""A login's two requests inside one process: what the daemon's own work costs.

    .venv/bin/python bench/inprocess.py [--accounts 2000] [--batch 32] [--rounds 5]
                                        [--dir /dev/shm] [--pyinstrument]

A real Service on a real SQLite store (sealed secrets, the schema, group commit)
and the daemon's own request path (Server.answer: the parse, Service.handle,
the batch and its commit, the verdict, the audit line's text, the reply's
encoding), fed pre-encoded frames with no socket in between: first every account's
`check`, then its `verify` with a valid fresh code, `--batch` requests per turn of
the event loop, as if that many clients had written at once. Each round uses its
own accounts (a code works once). Prints the cost per request of each verb, every
round and the median; exits 1 if any reply is not the expected one.

What it leaves out: the sockets and the kernel's wake-ups, the syslog datagram
(audit lines are formatted, not written), and, with the database on a tmpfs (the
default, /dev/shm), the fsync: `--dir /var/tmp` puts a disk under it.
`--pyinstrument` adds a round under pyinstrument (a test extra) and prints its
call tree. Last, what resolving a name costs where `check_accounts = true` (the
default; this bench's accounts are in no passwd, so it runs with false): one name
resolved on the loop's thread, and through the service's NSS worker as
`identity.Names` does when it has not seen the name lately, in CPU time of the
whole process. docs/performance.md ("Where a login's time goes") quotes it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from totpd import identity, otp  # noqa: E402
from totpd.audit import Audit  # noqa: E402
from totpd.config import Config  # noqa: E402
from totpd.admission import Admission  # noqa: E402
from totpd.daemon import eager_tasks  # noqa: E402
from totpd.server import Server  # noqa: E402
from totpd.protocol import HEADER_SIZE, Reply, encode_reply, encode_request  # noqa: E402
from totpd.sealing import Sealer, load_key  # noqa: E402
from totpd.sealing import key_check, secret_context  # noqa: E402
from totpd.service import Caller, Service, Session  # noqa: E402
from totpd.store import StoreOptions, open_store  # noqa: E402

ROOT = Caller(pid=1, uid=0, gid=0)  # sshd and sudo ask as root
PARAMS = otp.Params()


def enroll(store, sealer: Sealer, users: list[str]) -> dict[str, bytes]:
    """Active accounts with fresh secrets, written as import_commit writes them."""
    secrets = {user: otp.new_secret() for user in users}
    now = time.time()

    def write(tx) -> None:
        for user, secret in secrets.items():
            tx.put_pending(user, sealer.seal(secret, secret_context(user)), "SHA1", 6, PARAMS.period, now)
            tx.activate_pending(user, now)

    store.run(write)
    return secrets


async def feed(daemon: Server, frames: list[bytes], batch: int, statuses: Counter) -> float:
    """Answer every frame, `batch` per loop turn; seconds per request."""

    def done(reply: Reply) -> None:
        encode_reply(reply)  # as Connection._replied does
        statuses[reply.status] += 1

    start = time.perf_counter()
    for first in range(0, len(frames), batch):
        for payload in frames[first : first + batch]:
            daemon.answer(payload, ROOT, Session(), done)
        await asyncio.sleep(0)  # the batch's flush, scheduled during the answers, runs in this turn
    while sum(statuses.values()) < len(frames):
        await asyncio.sleep(0)
    return (time.perf_counter() - start) / len(frames)


async def measure(args: argparse.Namespace, directory: str) -> int:
    config = Config(
        database=os.path.join(directory, "totpd.db"), key_file=os.path.join(directory, "master.key"),
        check_accounts=False, audit="stderr", dbus="off",
    )
    sealer = Sealer(load_key(config.key_file, create=True))
    store = open_store(config.database, key_check(sealer), StoreOptions(prefill_wal=True))
    # Audit lines are formatted as in the daemon, then dropped by the log level.
    logging.getLogger("totpd").setLevel(logging.ERROR)
    service = Service(config, store, sealer, Audit(config.audit))
    daemon = Server(config, service, Admission(config.max_connections, config.max_connections_per_uid))
    daemon.loop = asyncio.get_running_loop()
    eager_tasks(daemon.loop)  # as totpd.daemon.serve does
    rounds: list[tuple[float, float]] = []
    clean = True

    async def one_round(number: int, profiler=None) -> tuple[float, float]:
        nonlocal clean
        users = [f"r{number}u{index}" for index in range(args.accounts)]
        secrets = enroll(store, sealer, users)
        step = otp.time_step(time.time(), PARAMS)
        checks = [encode_request("check", {"user": user, "service": "sshd", "rhost": "192.0.2.1"})[HEADER_SIZE:]
                  for user in users]
        verifies = [encode_request("verify", {"user": user, "code": otp.hotp(secrets[user], step, PARAMS.digits, PARAMS.algorithm.lower()),
                                              "service": "sshd", "rhost": "192.0.2.1"})[HEADER_SIZE:]
                    for user in users]
        check_statuses, verify_statuses = Counter(), Counter()
        if profiler is not None:
            profiler.start()
        check = await feed(daemon, checks, args.batch, check_statuses)
        verify = await feed(daemon, verifies, args.batch, verify_statuses)
        if profiler is not None:
            profiler.stop()
        print(f"round {number + 1}: check {check * 1e6:6.1f} us  verify {verify * 1e6:6.1f} us"
              f"  replies {dict(check_statuses)} {dict(verify_statuses)}", flush=True)
        if check_statuses != Counter(NEED_CODE=len(users)) or verify_statuses != Counter(ACCEPTED=len(users)):
            clean = False
        return check, verify

    try:
        for number in range(args.rounds):
            rounds.append(await one_round(number))
        print(f"\nmedian of {args.rounds} rounds, {args.accounts} accounts each, {args.batch} requests per loop"
              f" turn, database in {args.dir}:")
        print(f"  check  {statistics.median(r[0] for r in rounds) * 1e6:6.1f} us per request")
        print(f"  verify {statistics.median(r[1] for r in rounds) * 1e6:6.1f} us per request")
        here, worker = await name_resolution(service, "root", 2000)
        print(f"  a name resolved (identity.canonical, CPU): {here * 1e6:.1f} us on the loop's thread,"
              f" {worker * 1e6:.1f} us through the NSS worker")
        if args.pyinstrument:
            from pyinstrument import Profiler

            print("\none more round under pyinstrument (slower; not in the medians):")
            profiler = Profiler(interval=0.0002, async_mode="disabled")
            await one_round(args.rounds, profiler)
            print(profiler.output_text(unicode=False, color=False))
    finally:
        store.close()
    if not clean:
        print("NOT CLEAN: a reply was not NEED_CODE (check) or ACCEPTED (verify)", file=sys.stderr)
    return 0 if clean else 1


async def name_resolution(service: Service, name: str, count: int) -> tuple[float, float]:
    """CPU seconds per canonical-name lookup, called here and through the NSS worker."""
    start = time.process_time()
    for _ in range(count):
        identity.canonical(name)
    here = (time.process_time() - start) / count
    start = time.process_time()
    for _ in range(count):
        await service.nss.run(identity.canonical, name)
    return here, (time.process_time() - start) / count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--accounts", type=int, default=2000, help="accounts per round (default 2000)")
    parser.add_argument("--batch", type=int, default=32, help="requests per event-loop turn (default 32)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds, each on its own accounts (default 5)")
    default_dir = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
    parser.add_argument("--dir", default=default_dir, help=f"where the scratch database goes (default {default_dir})")
    parser.add_argument("--pyinstrument", action="store_true", help="add a round under pyinstrument and print its call tree")
    args = parser.parse_args()
    if args.accounts < 1 or args.batch < 1 or args.rounds < 1:
        parser.error("--accounts, --batch and --rounds must be at least 1")
    directory = tempfile.mkdtemp(prefix="totpd-inprocess-", dir=args.dir)
    try:
        return asyncio.run(measure(args, directory))
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
