"""Claim latency on PostgreSQL: p50/p99 of `Ledger.claim_next` with 1, 4 and 8 processes.

    .venv/bin/python bench/claims.py [--rows 2000] [--threads 8] [--processes 1,4,8]
        [--url postgresql+psycopg://postgres@127.0.0.1:5432/test]

For each process count, a fresh private schema gets --rows due pending revisions (each
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
import uuid
from pathlib import Path

import sqlalchemy

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.storm import fill, storm

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def run(url: str, processes: int, threads: int, rows: int) -> str:
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    admin = sqlalchemy.create_engine(url)
    with admin.begin() as connection:
        connection.exec_driver_sql(f"CREATE SCHEMA {schema}")
    private = f"{url}?options=-csearch_path%3D{schema}"
    try:
        fill(private, rows)
        before = os.getloadavg()[0]
        with tempfile.TemporaryDirectory() as workdir:
            result = storm(private, processes, threads, Path(workdir))
        after = os.getloadavg()[0]
    finally:
        with admin.begin() as connection:
            connection.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        admin.dispose()
    once = len(result.claimed) == rows == len(set(result.claimed))
    ms = [s * 1000 for s in result.latencies]
    return (
        f"| {processes} x {threads} | {statistics.median(ms):.1f} | {percentile(ms, 0.99):.1f} "
        f"| {max(ms):.1f} | {rows / result.seconds:.0f} | {'yes' if once else 'NO'} "
        f"| {result.empty_while_due} | {before:.1f} / {after:.1f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default=PG_URL)
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
        print(run(args.url, processes, args.threads, args.rows), flush=True)


if __name__ == "__main__":
    main()
