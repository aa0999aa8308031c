"""Soak: the crash suite at a scale too long for CI, several rounds, figures summed.

    .venv/bin/python bench/soak.py [--rounds 3] [--kills 100] [--images 1000]
                                   [--local-images 500] [--out /tmp/cutoutd-soak]

Each round runs `tests/reliability/test_crash.py` (the real `cutoutd run`, SIGKILLed at
random moments and restarted, against the HTTPS Dropbox fake and the Photoshop fake, then
against a local folder with the local engine) with a new random seed, and writes each
scenario's figures as JSON under `--out/round-N/`. The same assertions as in CI hold in
every round (0 lost inputs, 0 duplicate outputs, every revision terminal, ledger and
storage agreeing, duplicate submissions <= kills); the summary adds them up.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SUMMED = (
    "images",
    "kills",
    "lost_inputs",
    "duplicate_outputs",
    "non_terminal",
    "disagreements",
    "engine_submissions",
    "duplicate_submissions",
    "resumed_jobs",
    "seconds",
)


def run_round(number: int, args: argparse.Namespace) -> tuple[int, Path]:
    out = args.out / f"round-{number}"
    seed = random.randrange(1_000_000)
    env = {
        **os.environ,
        "CUTOUTD_RESULTS_DIR": str(out),
        "CUTOUTD_CRASH_SEED": str(seed),
        "CUTOUTD_CRASH_KILLS": str(args.kills),
        "CUTOUTD_CRASH_IMAGES": str(args.images),
        "CUTOUTD_CRASH_LOCAL_IMAGES": str(args.local_images),
    }
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-o",
        "timeout=0",
        "tests/reliability/test_crash.py",
    ]
    print(f"round {number}: seed {seed}", flush=True)
    result = subprocess.run(command, cwd=ROOT, env=env, check=False)
    return result.returncode, out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--kills", type=int, default=100)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--local-images", type=int, default=500)
    parser.add_argument("--out", type=Path, default=Path("/tmp/cutoutd-soak"))
    args = parser.parse_args()
    started = time.monotonic()
    totals: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    failed_rounds = 0
    for number in range(1, args.rounds + 1):
        code, out = run_round(number, args)
        failed_rounds += code != 0
        for path in sorted(out.glob("*.json")):
            figures = json.loads(path.read_text())
            for key in SUMMED:
                totals[figures["scenario"]][key] += figures.get(key, 0)
    print(f"\n{args.rounds} rounds in {time.monotonic() - started:.0f} s, {failed_rounds} failed")
    for scenario, figures in sorted(totals.items()):
        print(scenario + ": " + ", ".join(f"{k} {figures[k]:g}" for k in SUMMED))
    return 1 if failed_rounds else 0


if __name__ == "__main__":
    sys.exit(main())
