#!/usr/bin/env python3
"""Verifications per second and latency: fleet mode (PostgreSQL, two daemons) beside SQLite.

    sudo python3 bench/bench_postgres.py [--seconds 5] [--clients 1,16,64]

Starts a throwaway PostgreSQL cluster (as tests/helpers/pgcluster.py does: initdb + pg_ctl on
a temp dir, a private socket, fsync and synchronous_commit on), two totpd daemons on
it, and, for comparison, one daemon on SQLite. Accounts are provisioned with
`totpctl import tsv`. Each client keeps one connection to a daemon (clients alternate
between the two PostgreSQL daemons) and sends verifications of *valid, fresh* codes
(each account's steps now-1, now, now+1, in order), so every request is the full
login path: judge, advance the replay step, commit, reply ACCEPTED. Latency is
measured by the client, from send to reply. Prints a Markdown table for
docs/performance.md.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests" / "helpers")]

import pyotp  # noqa: E402

import wire  # noqa: E402
from daemonproc import DaemonProcess  # noqa: E402
from pgcluster import PostgresCluster  # noqa: E402
from totpd.protocol import encode_request  # noqa: E402

OFFSETS = (-1, 0, 1)


def _client(args: tuple[str, list[tuple[str, str]], float, float]) -> tuple[list[float], dict[str, int], float]:
    """One client: a connection, its own accounts, fresh codes from `start` until `until`."""
    socket_path, accounts, start, until = args
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    with wire.connect(socket_path, timeout=30) as sock:
        time.sleep(max(0.0, start - time.monotonic()))  # every client starts together
        for user, secret in accounts:
            totp = pyotp.TOTP(secret)
            for offset in OFFSETS:
                if time.monotonic() >= until:
                    return latencies, statuses, time.monotonic()
                value = totp.at(time.time() + offset * totp.interval)
                started = time.perf_counter()
                sock.sendall(encode_request("verify", {"user": user, "code": value, "service": "bench"}))
                reply = wire.read_reply(sock)
                latencies.append(time.perf_counter() - started)
                statuses[reply.status] = statuses.get(reply.status, 0) + 1
    return latencies, statuses, time.monotonic()


def _run_clients(sockets: list[str], accounts: list[tuple[str, str]], clients: int, seconds: float) -> dict[str, object]:
    share = len(accounts) // clients
    start = time.monotonic() + 1.0 + clients * 0.02  # time for every client process to fork and connect
    until = start + seconds
    jobs = [(sockets[i % len(sockets)], accounts[i * share : (i + 1) * share], start, until) for i in range(clients)]
    # One process per client: the clients' own Python must not be what is measured.
    with multiprocessing.get_context("fork").Pool(clients) as pool:
        results = pool.map(_client, jobs)
    elapsed = max(end for _, _, end in results) - start
    latencies = sorted(latency for part, _, _ in results for latency in part)
    statuses: dict[str, int] = {}
    for _, part, _ in results:
        for status, count in part.items():
            statuses[status] = statuses.get(status, 0) + count
    exhausted = sum(len(part) == len(job[1]) * len(OFFSETS) for (part, _, _), job in zip(results, jobs))
    return {
        "requests": len(latencies),
        "per_second": len(latencies) / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
        "statuses": statuses,
        "exhausted": exhausted,
    }


def _provision(daemon: DaemonProcess, count: int, prefix: str) -> list[tuple[str, str]]:
    accounts = [(f"{prefix}{i:06d}", pyotp.random_base32(32)) for i in range(count)]
    tsv = daemon.workdir / "accounts.tsv"
    tsv.write_text("".join(f"{user}\t{secret}\n" for user, secret in accounts))
    result = daemon.ctl("import", "tsv", str(tsv), timeout=900)
    tsv.unlink()
    if result.returncode != 0:
        raise SystemExit(f"provisioning failed: {result.stderr}")
    return accounts


def _bench(label: str, daemons: list[DaemonProcess], client_counts: list[int], seconds: float, accounts_per_run: int) -> list[dict]:
    rows = []
    for run, clients in enumerate(client_counts):
        accounts = _provision(daemons[0], accounts_per_run, f"{label[:2].lower()}{run}u")
        result = _run_clients([d.socket_path for d in daemons], accounts, clients, seconds)
        result.update(store=label, daemons=len(daemons), clients=clients)
        rows.append(result)
        print(
            f"{label:<10} daemons={len(daemons)} clients={clients:>2}: {result['per_second']:8.0f}/s"
            f"  p50 {result['p50_ms']:6.2f} ms  p99 {result['p99_ms']:6.2f} ms  {result['statuses']}"
            + (f"  ({result['exhausted']} clients ran out of accounts)" if result["exhausted"] else ""),
            flush=True,
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each run (default 5)")
    parser.add_argument("--clients", default="1,16,64", help="client counts (default 1,16,64)")
    parser.add_argument("--accounts", type=int, default=12000, help="fresh accounts per run (default 12000)")
    args = parser.parse_args()
    client_counts = [int(part) for part in args.clients.split(",")]
    top = Path(tempfile.mkdtemp(prefix="totpd-bench-"))
    top.chmod(0o755)
    key = str(top / "fleet" / "master.key")
    common = dict(check_accounts=False, audit="stderr", log_level="warning", key_file=key, max_connections_per_uid=256)
    cluster = PostgresCluster().init().start()
    daemons: list[DaemonProcess] = []
    try:
        dsn = cluster.dsn(cluster.create_database("bench"))
        sqlite = DaemonProcess(top / "sqlite", **common).start()
        daemons.append(sqlite)
        rows = _bench("SQLite", [sqlite], client_counts, args.seconds, args.accounts)
        sqlite.stop()
        fleet = [DaemonProcess(top / f"host{i}", database=dsn, **common).start() for i in range(2)]
        daemons += fleet
        rows += _bench("PostgreSQL", fleet, client_counts, args.seconds, args.accounts)
    finally:
        for daemon in daemons:
            daemon.stop()
        cluster.destroy()
        shutil.rmtree(top, ignore_errors=True)

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    print(f"\n{os.cpu_count()} CPUs ({cpu}), Linux {platform.release()}, Python {platform.python_version()},"
          f" PostgreSQL {cluster.bin.parent.name}; {args.seconds:g} s per run\n")
    print("| store | daemons | clients | verifications/s | p50 | p99 |")
    print("|-------|---------|---------|-----------------|-----|-----|")
    for row in rows:
        print(f"| {row['store']} | {row['daemons']} | {row['clients']} | {row['per_second']:,.0f} |"
              f" {row['p50_ms']:.2f} ms | {row['p99_ms']:.2f} ms |")
    bad = [row for row in rows if set(row["statuses"]) != {"ACCEPTED"}]
    if bad:
        print("\nnot every verification was ACCEPTED:", [row["statuses"] for row in bad], file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
