"""Benchmark the status page: its answers at 100,000 revisions, and what serving it
costs the pipeline.

    .venv/bin/python bench/web_status.py [--count 100000] [--runs 30] [--images 24] [--pairs 4]

1. **Latency**, in-process (Flask's test client, no sockets): the ledger of
   bench/ledger_audit.py (cached under --cache; 180 days of revisions and their events,
   real schema), the page's clock set to the end of that span so that "today", "7 days"
   and the 48-hour chart hold data. Median and max over --runs requests of `/` (overview,
   first results page, latest failures), `/results`, `/api/overview` (the live update)
   and `/failures` (first page).
2. **Throughput cost**: the real Service with the real local engine (u2netp) takes
   --images synthetic 1024x1024 product shots (bench/inputs.py) through
   `run_once`, with `[http] enabled = false` ("off") and with the page on ("on": the
   server, before/after thumbnails for every output, and one client fetching
   /api/overview every --poll seconds (default 1: five times what an open page polls)
   and `/` every sixth time), warmed up (templates compiled) before the clock starts.
   Runs alternate off/on, in both orders; per pair: the wall-clock rate ratio (it swings
   with the load of this shared machine), the process's CPU seconds, and the page's own
   CPU attributed exactly (each request's thread CPU, each thumbnail pair's).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.inputs import product_shot
from bench.ledger_audit import SPAN, START, cached_ledger, timed
from daemon import delivery
from daemon.config import parse_settings
from daemon.ledger import Ledger
from daemon.ledger.dashboard import Dashboard
from daemon.ledger.queries import LedgerReader
from daemon.logs import configure_logging
from daemon.service import Service
from daemon.web.app import LiveState, create_app
from daemon.web.security import Guard


def cpu_ms(action: Any, runs: int) -> float:
    """Median CPU milliseconds of this thread per call (the load of other processes on
    this shared machine stretches wall time, much less CPU time)."""
    samples = []
    for _ in range(runs):
        started = time.thread_time()
        action()
        samples.append((time.thread_time() - started) * 1000)
    return statistics.median(samples)


def latency(cache: Path, count: int, runs: int) -> None:
    path = cached_ledger(cache, count)
    dashboard = Dashboard(LedgerReader(f"sqlite:///{path}", writer=False))
    live = LiveState("local", "bench", health=lambda: None, last_poll=lambda: time.time())
    end = START + SPAN
    app = create_app(dashboard, live, guard=Guard(None), now=lambda: end)
    client = app.test_client()
    print(f"## latency at {count:,} revisions ({path.name}, {path.stat().st_size >> 20} MiB)")
    print("| request | median ms | max ms | median CPU ms |\n|---|---|---|---|")
    for url in ("/", "/results", "/api/overview", "/failures"):
        assert client.get(url).status_code == 200, url
        median, worst = timed(lambda url=url: client.get(url), runs)
        cpu = cpu_ms(lambda url=url: client.get(url), runs)
        print(f"| GET {url} | {median:.1f} | {worst:.1f} | {cpu:.1f} |")
    dashboard.close()


POLLER = """
import sys, time, requests
url, every, fetched, session = sys.argv[1], float(sys.argv[2]), 0, requests.Session()
while sys.stdin.readable():
    for path in ["/api/overview"] + (["/"] if fetched % 6 == 0 else []):
        session.get(url + path, timeout=10).raise_for_status()
        fetched += 1
    time.sleep(every)
"""
POLL_SECONDS = 1.0  # --poll: an open page asks every 5 s


ORIGINAL_PREVIEWS = delivery.cutout_previews


def start_poller(url: str) -> subprocess.Popen[bytes]:
    """The page's client in a process of its own: its CPU is not the daemon's."""
    command = [sys.executable, "-c", POLLER, url, str(POLL_SECONDS)]
    return subprocess.Popen(command, stdin=subprocess.PIPE)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def one_run(folder: Path, images: list[bytes], page: bool) -> tuple[float, float, PageCpu]:
    """(images per second, CPU seconds of this process per image, the page's own CPU)"""
    root = folder / "RemoveBGProcess"
    (root / "input").mkdir(parents=True)
    for n, data in enumerate(images):
        (root / "input" / f"{n:03d}.jpg").write_bytes(data)
    settings = parse_settings({
        "source": {"root": str(root), "settle_seconds": 0, "poll_interval": 0.5},
        "ledger": {"url": f"sqlite:///{folder / 'ledger.sqlite3'}"},
        "engine": {"workers": 2},
        "http": {"enabled": page, "port": 0},
        "log": {"format": "json", "level": "WARNING"},
    })  # fmt: skip
    Ledger(settings.ledger.url).migrate()
    service = Service(settings)
    server = service.serve_http() if page else None
    served = PageCpu()
    poller = None
    if server is not None:
        url = server.url.rstrip("/")
        for path in ("/", "/api/overview"):  # warm up: templates compiled, reader opened
            urllib.request.urlopen(url + path, timeout=30).close()
        served.attach()
        poller = start_poller(url)
    started, cpu = time.perf_counter(), cpu_seconds()
    try:
        summary = service.run_once()  # thumbnails are stored as each image finishes
        elapsed, cpu = time.perf_counter() - started, cpu_seconds() - cpu
    finally:
        if poller is not None:
            poller.kill()
            poller.wait()
        if server is not None:
            server.close()
        service.close()
        delivery.cutout_previews = ORIGINAL_PREVIEWS
    assert sum(summary.counts.values()) == len(images), summary
    return len(images) / elapsed, cpu, served


class PageCpu:
    """The CPU the page's own work takes, attributed exactly: each request's thread CPU
    (Flask's request signals, on the waitress thread that serves it) and each pair of
    previews the output writer makes (daemon.delivery.cutout_previews, wrapped)."""

    def __init__(self) -> None:
        self.requests = 0
        self.request_seconds = 0.0
        self.preview_seconds = 0.0
        self._local = threading.local()
        self._lock = threading.Lock()

    def attach(self) -> None:
        from flask import request_finished, request_started

        request_started.connect(self._started, weak=False)
        request_finished.connect(self._finished, weak=False)
        original = delivery.cutout_previews

        def timed_previews(*args: Any, **kwargs: Any) -> tuple[bytes | None, bytes]:
            started = time.thread_time()
            try:
                return original(*args, **kwargs)
            finally:
                with self._lock:
                    self.preview_seconds += time.thread_time() - started

        delivery.cutout_previews = timed_previews

    def _started(self, sender: object, **extra: object) -> None:
        self._local.started = time.thread_time()

    def _finished(self, sender: object, **extra: object) -> None:
        with self._lock:
            self.requests += 1
            self.request_seconds += time.thread_time() - self._local.started


def throughput(count: int, pairs: int) -> None:
    images = []
    for seed in range(count):
        image, _ = product_shot(seed)
        path = Path(tempfile.mkstemp(suffix=".jpg")[1])
        image.save(path, quality=90)
        images.append(path.read_bytes())
        path.unlink()
    print(f"\n## throughput, {count} images of 1024x1024 per run, local engine, 2 workers")
    print("| pair | off img/s | on img/s | on/off | off CPU s | on CPU s | requests "
          "| their CPU s | previews CPU s | page share of on CPU | load 1 min |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    ratios, shares = [], []
    for pair in range(1, pairs + 1):
        order = (False, True) if pair % 2 else (True, False)
        rates: dict[bool, float] = {}
        cpu: dict[bool, float] = {}
        page_cpu = PageCpu()
        for page in order:
            with tempfile.TemporaryDirectory() as folder:
                rates[page], cpu[page], measured = one_run(Path(folder), images, page)
                page_cpu = measured if page else page_cpu
        ratios.append(rates[True] / rates[False])
        own = page_cpu.request_seconds + page_cpu.preview_seconds
        shares.append(own / cpu[True])
        print(f"| {pair} | {rates[False]:.3f} | {rates[True]:.3f} | {ratios[-1]:.3f} "
              f"| {cpu[False]:.1f} | {cpu[True]:.1f} | {page_cpu.requests} "
              f"| {page_cpu.request_seconds:.2f} | {page_cpu.preview_seconds:.2f} "
              f"| {shares[-1] * 100:.2f} % | {os.getloadavg()[0]:.1f} |")  # fmt: skip
    print(f"\nmedian throughput on/off {statistics.median(ratios):.3f} (wall clock, shared "
          f"machine); the page's own work took {statistics.median(shares) * 100:.2f} % of the "
          "daemon's CPU (median)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/cutoutd-bench"))
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--poll", type=float, default=1.0, help="seconds between polls")
    parser.add_argument("--skip-throughput", action="store_true")
    args = parser.parse_args()
    global POLL_SECONDS
    POLL_SECONDS = args.poll
    configure_logging("WARNING", "json")
    print(f"# {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, {os.cpu_count()} CPUs,")
    print(f"# Python {platform.python_version()}; load average before: "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")  # fmt: skip
    latency(args.cache, args.count, args.runs)
    if not args.skip_throughput:
        throughput(args.images, args.pairs)
    print(f"\n# load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
