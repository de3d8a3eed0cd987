#!/usr/bin/env python3
"""Before and after, side by side: bench.py on two commits in alternating rounds.

    sudo .venv/bin/python bench/ab.py BEFORE [AFTER] [--rounds 3] [--only daemon,pam]

BEFORE and AFTER are commits (AFTER defaults to this working tree). Each commit is
checked out in a scratch worktree with its PAM module and bench tools built there;
then bench/bench.py of each runs in turn (before, after, before, after, ...) so that
both see the same machine, and one table gives the median of each row, the ratio,
and every round's value (the spread says how much the shared machine moved).
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TOOLS = ["bench/loadgen", "bench/pamdrive", "bench/logsink"]


def rows_of(result: dict) -> dict[str, float]:
    """The numbers of one bench.py --json result worth comparing, by row name."""
    rows: dict[str, float] = {}
    for run in result.get("pam", []):
        name = f"PAM {run['module']}, {run['clients']} client(s)"
        rows[f"{name}: logins/s"] = run["per_second"]
        rows[f"{name}: p50 ms"] = run["p50_ms"]
        if run.get("server_cpu_s"):  # the daemon's, for pam_totpd's rows
            rows[f"{name}: daemon CPU us per login"] = run["server_cpu_s"] / run["transactions"] * 1e6
    for run in result.get("daemon", []):
        name = f"daemon {run['mode']}, {run['clients']} client(s)"
        rows[f"{name}: verifications/s"] = run["per_second"]
        rows[f"{name}: p99 ms"] = run["p99_us"] / 1000
    return rows


def table(results: dict[str, list[dict]]) -> str:
    """One Markdown table: each row's median before and after, the ratio, the rounds."""
    values: dict[str, dict[str, list[float]]] = collections.defaultdict(lambda: collections.defaultdict(list))
    for side, runs in results.items():
        for result in runs:
            for name, value in rows_of(result).items():
                values[name][side].append(value)
    lines = ["| | before | after | ratio | rounds (before; after) |", "|---|---:|---:|---:|---|"]
    for name, sides in values.items():
        before, after = sides.get("before", []), sides.get("after", [])
        if not before or not after:
            continue
        b, a = statistics.median(before), statistics.median(after)
        ratio = f"{a / b:.2f}x" if b else "-"
        rounds = " ".join(f"{v:,.2f}" for v in before) + "; " + " ".join(f"{v:,.2f}" for v in after)
        lines.append(f"| {name} | {b:,.2f} | {a:,.2f} | {ratio} | {rounds} |")
    return "\n".join(lines)


def prepare(commit: str, top: Path) -> Path:
    tree = top / commit.replace("/", "_")
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-f", str(tree), commit],
                   check=True, capture_output=True)
    subprocess.run(["make", "-s", "-C", str(tree), "pam", *TOOLS], check=True)
    return tree


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", help="commit to compare against")
    parser.add_argument("after", nargs="?", help="commit (default: this working tree)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", default="daemon,pam", help="bench.py sections")
    parser.add_argument("--seconds", default="4", help="bench.py --seconds")
    args = parser.parse_args()
    top = Path(tempfile.mkdtemp(prefix="totpd-ab-"))
    trees = {"before": prepare(args.before, top)}
    if args.after:
        trees["after"] = prepare(args.after, top)
    else:
        subprocess.run(["make", "-s", "-C", str(REPO), "pam", *TOOLS], check=True)
        trees["after"] = REPO
    results: dict[str, list[dict]] = {"before": [], "after": []}
    try:
        for round_ in range(1, args.rounds + 1):
            for side, tree in trees.items():
                out = top / f"{side}-{round_}.json"
                print(f"round {round_}: {side} ({tree})", file=sys.stderr, flush=True)
                subprocess.run([sys.executable, str(tree / "bench" / "bench.py"), "--only", args.only,
                                "--seconds", args.seconds, "--json", str(out)],
                               check=True, stdout=subprocess.DEVNULL, cwd=tree)
                results[side].append(json.loads(out.read_text()))
    finally:
        for side, tree in trees.items():
            if tree != REPO:
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], capture_output=True)
    print(f"before: {args.before}; after: {args.after or 'working tree'}; {args.rounds} alternating rounds;"
          f" bench.py --only {args.only}; medians\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
