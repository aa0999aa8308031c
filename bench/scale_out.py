"""Scale-out on one PostgreSQL ledger: takeover time after `kill -9`, and local-engine
throughput on 1, 2 and 3 processes.

    .venv/bin/python bench/scale_out.py [--trials 5] [--lease 4] [--images 24]
                                        [--processes 1,2,3] [--json out.json]

Both parts run the real `cutoutd run` processes of `tests/reliability/cluster.py`, each
with its own node_id, state directory and HTTP port, on a fresh PostgreSQL database
(127.0.0.1:5432, as the test suite).

1. **Takeover**: per trial, two nodes on the HTTPS Dropbox fake and the Photoshop fake
   (jobs take 1-2 s, so a node holds submitted jobs); when one node holds at least two
   submitted jobs it is SIGKILLed and never restarted. Takeover time: from the kill until
   every revision it held is claimed by the other node or finished (the ledger is read
   every 20 ms). Also: until the last image finished, and Adobe submissions repeated for
   revisions whose job id was stored (0 expected).
2. **Throughput**: N processes on one local folder, each with `[engine] workers = 1` and
   `model_runs = 1`, the bundled u2netp model (one model run still uses every core:
   onnxruntime runs it on cores / model_runs threads). Each run warms up on 2 images per process, then times
   `--images` 1024x1024 product shots from their copy into input/ until every one is
   archived. On a 2-core machine expect no gain past 2 processes.

The machine's load average is printed beside each figure: figures taken under load say so.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.inputs import product_shot  # noqa: E402
from tests.fakes.dropbox_server import FakeDropbox  # noqa: E402
from tests.reliability.cluster import TERMINAL, Cluster, fresh_database  # noqa: E402
from tests.reliability.harness import (  # noqa: E402
    local_sections,
    merge,
    put_shots,
    shots,
    start_adobe,
)


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def takeover_trial(work: Path, lease: float, seed: int) -> dict[str, Any]:
    with FakeDropbox(https=True) as dropbox, fresh_database("cutoutd_bench") as url:
        adobe = start_adobe(dropbox, latency=(1.0, 2.0))
        cluster = Cluster(work, url, dropbox, adobe, {"photoshop": {"max_in_flight": 4}}, lease)
        try:
            batch = shots(16, prefix=f"takeover{seed}", seed=seed)
            put_shots(dropbox, batch)
            victim, _other = cluster.start(2)
            cluster.wait(
                lambda: len(cluster.ledger.claimed_by(victim.name, with_job=True)) >= 2,
                60,
                "the victim holding submitted jobs",
            )
            victim.kill()
            killed = time.monotonic()
            held = {row["id"]: row for row in cluster.ledger.claimed_by(victim.name)}

            def taken_over() -> bool:
                """Each revision it held is claimed by the other node, or already done."""
                rows = [row for row in cluster.ledger.rows() if row["id"] in held]
                return all(
                    row["status"] in TERMINAL
                    or (row["status"] == "processing" and row["claimed_by"] != victim.name)
                    for row in rows
                )

            took = cluster.wait(taken_over, lease + 60, "the takeover", interval=0.02)
            finished = cluster.wait_finished({s.name for s in batch}, lease + 120)
            per_name = adobe.submissions_by_name()
            repeated = sum(
                per_name[row["path"]] - 1 for row in held.values() if row["job_id"] is not None
            )
            return {
                "held": len(held),
                "held_with_job_id": sum(1 for row in held.values() if row["job_id"]),
                "takeover_s": round(took, 2),
                "all_finished_after_kill_s": round(time.monotonic() - killed, 2),
                "finished_wait_s": round(finished, 2),
                "resubmitted_with_stored_job_id": repeated,
                "loadavg": loadavg(),
            }
        finally:
            cluster.close()
            adobe.stop()


def write_product_shots(folder: Path, count: int, start: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for n in range(start, start + count):
        image, _ = product_shot(n)
        name = f"product {n:04d}.jpg"
        staging = folder.parent / f".{name}"
        image.save(staging, "JPEG", quality=92)
        staging.rename(folder / name)  # whole files only
        names.append(name)
    return names


def throughput_run(work: Path, processes: int, images: int) -> dict[str, Any]:
    root = work / "RemoveBGProcess"
    staging = work / "staging"
    with fresh_database("cutoutd_bench") as url:
        base = merge(
            local_sections(root, work / "unused.sqlite3"),
            {"engine": {"workers": 1, "model_runs": 1}, "source": {"poll_interval": 0.2}},
        )
        cluster = Cluster(work, url, None, lease_seconds=30.0, base=base)
        try:
            (root / "input").mkdir(parents=True, exist_ok=True)
            cluster.start(processes)
            warm = write_product_shots(staging / "warm", 2 * processes, 10_000)
            for name in warm:
                shutil.move(staging / "warm" / name, root / "input" / name)
            cluster.wait_finished(set(warm), 600, "the warm-up images")
            timed = write_product_shots(staging / "timed", images, 0)
            started = time.monotonic()
            for name in timed:
                shutil.move(staging / "timed" / name, root / "input" / name)
            cluster.wait_finished(set(timed), 1800, "the timed images")
            seconds = time.monotonic() - started
            claimed = {
                e["actor"]
                for e in cluster.ledger.events()
                if e["event"] in ("claimed", "succeeded")
            }
            return {
                "processes": processes,
                "images": images,
                "seconds": round(seconds, 1),
                "images_per_s": round(images / seconds, 3),
                "nodes_that_worked": len(claimed & {n.name for n in cluster.nodes}),
                "loadavg": loadavg(),
            }
        finally:
            cluster.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--lease", type=float, default=4.0)
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--processes", default="1,2,3")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--work", type=Path, default=Path("/tmp/cutoutd-bench-scale-out"))
    parser.add_argument("--skip-takeover", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    results: dict[str, Any] = {"lease_seconds": args.lease, "takeover": [], "throughput": []}

    if not args.skip_takeover:
        for trial in range(args.trials):
            figures = takeover_trial(args.work / f"takeover-{trial}", args.lease, 40 + trial)
            print(f"takeover trial {trial}: {json.dumps(figures)}", flush=True)
            results["takeover"].append(figures)
        times = [t["takeover_s"] for t in results["takeover"]]
        results["takeover_summary"] = {
            "trials": len(times),
            "median_s": round(statistics.median(times), 2),
            "max_s": max(times),
            "min_s": min(times),
            "resubmitted_with_stored_job_id": sum(
                t["resubmitted_with_stored_job_id"] for t in results["takeover"]
            ),
        }
        print(f"takeover: {json.dumps(results['takeover_summary'])}", flush=True)

    if not args.skip_throughput:
        # Alternate the orders (1,2,3 then 3,2,1) so that a load change hits each alike.
        counts = [int(n) for n in args.processes.split(",")]
        for order, run in enumerate([*counts, *reversed(counts)]):
            figures = throughput_run(args.work / f"throughput-{order}", run, args.images)
            print(f"throughput: {json.dumps(figures)}", flush=True)
            results["throughput"].append(figures)

    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
