"""Claim latency on PostgreSQL: p50/p99 of `Ledger.claim_next` with 1, 4 and 8 processes.

    .venv/bin/python bench/claims.py [--rows 2000] [--threads 8] [--processes 1,4,8]

For each process count, a fresh private schema of the local PostgreSQL (tests/postgres.py)
gets --rows due pending revisions (each
its own input), then that many real claimer processes (tests/claimer.py, --threads
threads each, started together) claim until nothing is left. Reported: the latency of
every successful claim (one transaction: the `UPDATE ... (SELECT ... FOR UPDATE SKIP
LOCKED LIMIT 1) RETURNING` statement and its `claimed` event), the claims per second over
the whole storm, whether every row was claimed exactly once, and the 1-minute load average
before and after (this machine is shared).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.postgres import private_schema
from tests.storm import fill, storm


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def run(processes: int, threads: int, rows: int) -> str:
    with private_schema("bench") as url:
        fill(url, rows)
        before = os.getloadavg()[0]
        with tempfile.TemporaryDirectory() as workdir:
            result = storm(url, processes, threads, Path(workdir))
        after = os.getloadavg()[0]
    once = len(result.claimed) == rows == len(set(result.claimed))
    ms = [s * 1000 for s in result.latencies]
    return (
        f"| {processes} x {threads} | {statistics.median(ms):.1f} | {percentile(ms, 0.99):.1f} "
        f"| {max(ms):.1f} | {rows / result.seconds:.0f} | {'yes' if once else 'NO'} "
        f"| {result.empty_while_due} | {before:.1f} / {after:.1f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--processes", default="1,4,8")
    args = parser.parse_args()
    print(
        "| processes x threads | p50 ms | p99 ms | max ms | claims/s | each row once "
        "| empty while due | load avg before / after |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for processes in (int(n) for n in args.processes.split(",")):
        print(run(processes, args.threads, args.rows), flush=True)


if __name__ == "__main__":
    main()
