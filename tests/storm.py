"""Run several claimer processes (tests/claimer.py) against one ledger, started together."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon.ledger import Ledger
from daemon.models import ChangeBatch, RemoteFile

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True, slots=True)
class StormResult:
    claimed: list[int]  # every claim of every process
    latencies: list[float]
    empty_while_due: int
    seconds: float


def fill(url: str, rows: int) -> None:
    """`rows` due pending revisions, each of its own input."""
    ledger = Ledger(url, node_id="filler")
    ledger.migrate()
    files = tuple(
        RemoteFile(f"storm/{n:05d}.jpg", f"storm/{n:05d}.jpg", "0001", 10, f"{n:064d}")
        for n in range(rows)
    )
    ledger.record_changes("storm", ChangeBatch(files, "c"), "local")
    ledger.close()


def storm(url: str, processes: int, threads: int, workdir: Path) -> StormResult:
    procs = []
    outs = [workdir / f"claimer-{n}.json" for n in range(processes)]
    for n, out in enumerate(outs):
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "tests.claimer", url, f"node-{n}", str(threads), str(out)],
                cwd=ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
        )
    for proc in procs:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    started = time.perf_counter()
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    for proc in procs:
        assert proc.wait(timeout=300) == 0
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                pipe.close()
    seconds = time.perf_counter() - started
    results: list[dict[str, Any]] = [json.loads(out.read_text()) for out in outs]
    return StormResult(
        claimed=[i for r in results for i in r["claimed"]],
        latencies=[s for r in results for s in r["latencies"]],
        empty_while_due=sum(len(r["empty_while_due"]) for r in results),
        seconds=seconds,
    )
