"""One claiming node, as a real process: `python -m tests.claimer URL NODE THREADS OUT`.

Used by the claim storm (tests/integration/test_claim_storm.py) and by bench/claims.py.
It opens the ledger, prints `ready`, waits for a line on stdin (so that every process
starts at once), then claims with THREADS threads until a claim comes back empty, twice
in a row; each claimed row is finished (a fenced transition to `succeeded`) at once. Writes JSON to OUT:
claimed ids, claim latencies (seconds) and the ids a claim found after another had come
back empty (rows that were due to that empty claim: should be none).
"""

from __future__ import annotations

import json
import sys
import threading
import time

from daemon.ledger import Ledger
from daemon.models import ItemStatus


def main(url: str, node: str, threads: int, out: str) -> None:
    ledger = Ledger(url, node_id=node, pool_size=threads)
    claimed: list[int] = []
    latencies: list[float] = []
    empty_while_due: list[int] = []
    lock = threading.Lock()

    def claimer() -> None:
        while True:
            started = time.perf_counter()
            item = ledger.claim_next()
            took = time.perf_counter() - started
            if item is None:
                # Rows still pending now may only be locked by claims in flight elsewhere.
                # But if a second claim gets one, the first came back empty while it was due
                # (nothing adds rows or gives claims back here).
                item = ledger.claim_next()
                if item is None:
                    return
                with lock:
                    empty_while_due.append(item.id)
            with lock:
                claimed.append(item.id)
                latencies.append(took)
            # finish it, as a worker would: processing rows stay about as many as workers
            ledger.transition(item, ItemStatus.PROCESSING, ItemStatus.SUCCEEDED, "succeeded")

    with ledger.transaction():  # one connection opened before the start
        pass
    print("ready", flush=True)
    sys.stdin.readline()
    workers = [threading.Thread(target=claimer) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    ledger.close()
    with open(out, "w", encoding="utf-8") as handle:
        json.dump(
            {"claimed": claimed, "latencies": latencies, "empty_while_due": empty_while_due},
            handle,
        )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4])
