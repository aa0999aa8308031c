"""Benchmark the Photoshop engine against Adobe's submit limit, and the tutorials' loop.

    .venv/bin/python bench/photoshop_throughput.py [--images 300] [--tutorial-images 40]
    .venv/bin/python bench/photoshop_throughput.py --quick   # a fast sanity run

Both run in one process against the same fakes from tests/fakes/: the HTTPS Dropbox fake
and the Photoshop fake, whose window answers 429 past 3 submissions per 3 s (Adobe's hard
limit) and whose jobs take a latency drawn uniformly from 3-8 s.

1. `daemon`: the real `cutoutd --config X run --once` as a subprocess on `--images` inputs,
   with the shipped `[photoshop]` defaults (2 submissions per 3 s, 20 in flight, polls
   from 2 s growing 1.5x). Throughput is measured on the fake's side, from the times it
   accepted submissions: over the steady state (the middle 80 % of the submissions,
   an even number of intervals so that pairs are not split) as submissions per second,
   and as a fraction of the limit (2/3 per s). Also: wall time, 429s served, polls.
2. `tutorial`: the loop of the tutorials this project replaces, as a plain `requests`
   script on `--tutorial-images` other inputs: one image at a time, get a Dropbox
   temporary link, submit, poll every 3 s until done, download, upload. It runs after
   the daemon, so the two never share the rate window.

`--quick` scales time by 0.1 on every side (window 0.3 s, latency 0.3-0.8 s, polls, the
tutorial's 3 s sleep) and uses 30 + 10 images.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # the fakes live in the test tree
    sys.path.insert(0, str(REPO))

from tests.fakes.dropbox_server import FakeDropbox  # noqa: E402
from tests.fakes.photoshop_server import FakePhotoshop, source_name  # noqa: E402
from tests.helpers import alpha_iou, encode, shape_image  # noqa: E402

ROOT = "/RemoveBGProcess"
TUTORIAL_ROOT = "/Tutorial"
CUTOUTD = shutil.which("cutoutd", path=os.path.dirname(sys.executable)) or "cutoutd"


@dataclass(frozen=True)
class Scenario:
    images: int
    tutorial_images: int
    scale: float  # 1.0: Adobe's real time; 0.1 for --quick
    soft_limit: int = 2  # the engine's submit_limit
    hard_limit: int = 3  # the fake's 429 window

    @property
    def period(self) -> float:
        return 3.0 * self.scale

    @property
    def latency(self) -> tuple[float, float]:
        return (3.0 * self.scale, 8.0 * self.scale)

    @property
    def limit_rate(self) -> float:
        return self.soft_limit / self.period


# -- inputs ------------------------------------------------------------------------------


def put_images(dropbox: FakeDropbox, folder: str, names: list[str], seed: int) -> dict[str, Any]:
    masks = {}
    for n, name in enumerate(names):
        k = n + seed
        image, mask = shape_image(
            (320, 240),
            shape="ellipse" if k % 2 else "rectangle",
            color=(30 + (k * 37) % 120, 40 + (k * 53) % 100, 200 - (k * 29) % 150),
            box=(0.2 + (k % 7) * 0.02, 0.2 + (k % 3) * 0.02, 0.7, 0.8 - (k % 5) * 0.03),
        )
        dropbox.put_file(f"{folder}/input/{name}", encode(image, "JPEG", quality=95))
        masks[name] = mask
    return masks


def output_name(name: str) -> str:
    return f"{name.rsplit('.', 1)[0]}.png"


def check_outputs(dropbox: FakeDropbox, folder: str, masks: dict[str, Any]) -> dict[str, Any]:
    outputs = dropbox.files_under(f"{folder}/output")
    scores = [
        alpha_iou(outputs[f"{folder}/output/{output_name(name)}"], mask)
        for name, mask in masks.items()
        if f"{folder}/output/{output_name(name)}" in outputs
    ]
    return {"outputs": len(scores), "min_alpha_iou": round(min(scores), 3) if scores else None}


# -- the daemon --------------------------------------------------------------------------


def write_config(path: Path, adobe: FakePhotoshop, scenario: Scenario) -> None:
    s = scenario.scale
    path.write_text(
        f'[source]\nkind = "dropbox"\nroot = "{ROOT}"\nsettle_seconds = 0\n'
        '[engine]\nkind = "photoshop"\n'
        f'[ledger]\nurl = "sqlite:///{path.parent / "ledger.sqlite3"}"\n'
        f'[photoshop]\napi_url = "{adobe.url}"\nims_url = "{adobe.ims_url}"\n'
        f"submit_limit = {scenario.soft_limit}\nsubmit_period = {scenario.period:g}\n"
        f"max_in_flight = 20\npoll_initial = {2.0 * s:g}\npoll_multiplier = 1.5\n"
        f"poll_max = {30.0 * s:g}\njob_timeout = {600.0 * s:g}\n"
        '[log]\nformat = "json"\nlevel = "INFO"\n[http]\nport = 0\n'
    )


def environment(dropbox: FakeDropbox, adobe: FakePhotoshop) -> dict[str, str]:
    return {**os.environ, **dropbox.daemon_environment(), **adobe.daemon_environment()}


def report_progress(dropbox: FakeDropbox, adobe: FakePhotoshop, done: threading.Event) -> None:
    started = time.monotonic()
    while not done.wait(30):
        outputs = len(dropbox.files_under(f"{ROOT}/output"))
        print(
            f"  {time.monotonic() - started:5.0f} s: {adobe.submissions} submitted, "
            f"{outputs} outputs, {adobe.rate_limited} 429s",
            flush=True,
        )


def steady_rate(times: list[float]) -> tuple[float, float, int]:
    """Submissions per second over the middle 80 % of `times` (sorted), over an even
    number of intervals; also the window's length and its number of intervals."""
    lo = len(times) // 10
    hi = len(times) - 1 - len(times) // 10
    hi -= (hi - lo) % 2
    if hi <= lo:
        return 0.0, 0.0, 0
    span = times[hi] - times[lo]
    return (hi - lo) / span, span, hi - lo


def busiest_window(times: list[float], period: float) -> int:
    """The most submissions the fake accepted within any `period` seconds."""
    most, start = 0, 0
    for end, at in enumerate(times):
        while at - times[start] >= period:
            start += 1
        most = max(most, end - start + 1)
    return most


def run_daemon(
    dropbox: FakeDropbox, adobe: FakePhotoshop, scenario: Scenario, workdir: Path
) -> dict[str, Any]:
    names = [f"IMG_{n:04d}.jpg" for n in range(scenario.images)]
    masks = put_images(dropbox, ROOT, names, seed=0)
    config = workdir / "cutoutd.toml"
    write_config(config, adobe, scenario)
    command = [CUTOUTD, "--config", str(config), "run", "--once"]
    done = threading.Event()
    monitor = threading.Thread(target=report_progress, args=(dropbox, adobe, done), daemon=True)
    monitor.start()
    started = time.monotonic()
    with (workdir / "daemon.log").open("wb") as log:
        result = subprocess.run(
            command,
            stdout=subprocess.PIPE,
            stderr=log,
            env=environment(dropbox, adobe),
            check=False,
            timeout=3600,
        )
    wall = time.monotonic() - started
    done.set()
    with adobe.lock:
        jobs = list(adobe.jobs.values())
        polls, limited = adobe.status_polls, adobe.rate_limited
    times = sorted(job.created for job in jobs)
    per_image = Counter(source_name(job) for job in jobs)
    rate, span, intervals = steady_rate(times)
    summary = result.stdout.decode().strip()
    return {
        "images": scenario.images,
        "exit_code": result.returncode,
        "summary": summary,
        "wall_s": round(wall, 1),
        "images_per_s": round(scenario.images / wall, 4),
        "submissions": len(jobs),
        "images_submitted_more_than_once": sum(1 for c in per_image.values() if c > 1),
        "steady_submissions_per_s": round(rate, 4),
        "steady_window_s": round(span, 1),
        "steady_intervals": intervals,
        "fraction_of_limit": round(rate / scenario.limit_rate, 4),
        "busiest_window": busiest_window(times, scenario.period),
        "first_submission_after_s": round(times[0] - started, 1) if times else None,
        "rate_limited_429": limited,
        "status_polls": polls,
        "status_polls_per_s": round(polls / wall, 2),
        **check_outputs(dropbox, ROOT, masks),
        "ledger_succeeded_with_job_id": ledger_succeeded(config),
    }


def ledger_succeeded(config: Path) -> int:
    listing = subprocess.run(
        [CUTOUTD, "--config", str(config), "ledger", "list", "--format", "json"],
        capture_output=True,
        text=True,
        check=True,
    )
    rows = json.loads(listing.stdout)
    return sum(1 for row in rows if row["status"] == "succeeded" and row["job_id"])


# -- the tutorials' loop -----------------------------------------------------------------


class TutorialLoop:
    """What the tutorials do, with plain `requests`: one image at a time, a fixed sleep
    between status polls. Their code calls the long-gone `/sensei/cutout`; this calls V2
    with the same shape so that it can run against the same fake."""

    def __init__(self, dropbox: FakeDropbox, adobe: FakePhotoshop, poll_every: float) -> None:
        self.dropbox, self.adobe, self.poll_every = dropbox, adobe, poll_every
        self.http = requests.Session()
        self.verify = dropbox.ca_path or True  # per request: wins over REQUESTS_CA_BUNDLE
        form = {
            "grant_type": "refresh_token",
            "refresh_token": dropbox.refresh_token,
            "client_id": dropbox.app_key,
            "client_secret": dropbox.app_secret or "",
        }
        self.dropbox_token = self._json("POST", f"{dropbox.url}/oauth2/token", data=form)[
            "access_token"
        ]
        form = {
            "grant_type": "client_credentials",
            "client_id": adobe.client_id,
            "client_secret": adobe.client_secret,
            "scope": "openid,AdobeID,read_organizations",
        }
        token = self._json("POST", adobe.ims_url, data=form)["access_token"]
        self.adobe_headers = {"Authorization": f"Bearer {token}", "x-api-key": adobe.client_id}

    def _json(self, method: str, url: str, **kwargs: Any) -> dict[str, Any]:
        with self.http.request(method, url, timeout=60, verify=self.verify, **kwargs) as response:
            response.raise_for_status()
            body: dict[str, Any] = response.json()
            return body

    def process(self, name: str) -> None:
        auth = {"Authorization": f"Bearer {self.dropbox_token}"}
        link = self._json(
            "POST",
            f"{self.dropbox.url}/2/files/get_temporary_link",
            json={"path": f"{TUTORIAL_ROOT}/input/{name}"},
            headers=auth,
        )["link"]
        job = self._json(
            "POST",
            f"{self.adobe.url}/v2/remove-background",
            json={"image": {"source": {"url": link}}, "output": {"mediaType": "image/png"}},
            headers=self.adobe_headers,
        )
        while True:
            time.sleep(self.poll_every)
            status = self._json("GET", job["statusUrl"], headers=self.adobe_headers)
            if status["status"] in ("succeeded", "failed"):
                break
        if status["status"] == "failed":
            raise RuntimeError(f"{name}: {status.get('errorDetails')}")
        result_url = status["result"]["outputs"][0]["destination"]["url"]
        with self.http.get(result_url, timeout=60, verify=self.verify) as response:
            response.raise_for_status()
            data = response.content
        arg = {"path": f"{TUTORIAL_ROOT}/output/{output_name(name)}", "mode": "overwrite"}
        headers = {
            **auth,
            "Content-Type": "application/octet-stream",
            "Dropbox-API-Arg": json.dumps(arg),
        }
        self._json("POST", f"{self.dropbox.url}/2/files/upload", data=data, headers=headers)


def run_tutorial(dropbox: FakeDropbox, adobe: FakePhotoshop, scenario: Scenario) -> dict[str, Any]:
    names = [f"TUT_{n:04d}.jpg" for n in range(scenario.tutorial_images)]
    masks = put_images(dropbox, TUTORIAL_ROOT, names, seed=10_000)
    with adobe.lock:
        submissions, polls, limited = adobe.submissions, adobe.status_polls, adobe.rate_limited
    loop = TutorialLoop(dropbox, adobe, poll_every=3.0 * scenario.scale)
    started = time.monotonic()
    for n, name in enumerate(names, 1):
        loop.process(name)
        if n % 10 == 0:
            print(f"  tutorial: {n} done in {time.monotonic() - started:.0f} s", flush=True)
    wall = time.monotonic() - started
    loop.http.close()
    return {
        "images": len(names),
        "wall_s": round(wall, 1),
        "images_per_s": round(len(names) / wall, 4),
        "seconds_per_image": round(wall / len(names), 2),
        "submissions": adobe.submissions - submissions,
        "status_polls": adobe.status_polls - polls,
        "rate_limited_429": adobe.rate_limited - limited,
        **check_outputs(dropbox, TUTORIAL_ROOT, masks),
    }


# -- main --------------------------------------------------------------------------------


def machine() -> str:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs {model}".strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--images", type=int, default=None, help="daemon images (default 300)")
    parser.add_argument("--tutorial-images", type=int, default=None, help="default 40")
    parser.add_argument("--quick", action="store_true", help="time x0.1, 30 + 10 images")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    scenario = Scenario(
        images=args.images or (30 if args.quick else 300),
        tutorial_images=args.tutorial_images or (10 if args.quick else 40),
        scale=0.1 if args.quick else 1.0,
    )
    print(
        f"# {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {machine()}, Python "
        f"{platform.python_version()}",
        flush=True,
    )
    print(
        f"# limit {scenario.soft_limit} per {scenario.period:g} s (fake 429s past "
        f"{scenario.hard_limit}), latency {scenario.latency[0]:g}-{scenario.latency[1]:g} s",
        flush=True,
    )
    with (
        tempfile.TemporaryDirectory(prefix="cutoutd-bench-") as tmp,
        FakeDropbox(https=True) as dropbox,
        FakePhotoshop(
            submit_limit=scenario.hard_limit,
            submit_period=scenario.period,
            latency=scenario.latency,
            verify=dropbox.ca_path or True,
            seed=7,
        ) as adobe,
    ):
        print(f"daemon: {scenario.images} images", flush=True)
        daemon = run_daemon(dropbox, adobe, scenario, Path(tmp))
        print(json.dumps(daemon, indent=2), flush=True)
        print(f"tutorial: {scenario.tutorial_images} images", flush=True)
        tutorial = run_tutorial(dropbox, adobe, scenario)
        print(json.dumps(tutorial, indent=2), flush=True)
    results = {
        "date": f"{datetime.now(UTC):%Y-%m-%d}",
        "machine": machine(),
        "command": " ".join(["bench/photoshop_throughput.py", *sys.argv[1:]]),
        "scenario": {**asdict(scenario), "period": scenario.period, "latency": scenario.latency},
        "daemon": daemon,
        "tutorial": tutorial,
        "speedup": round(daemon["images_per_s"] / tutorial["images_per_s"], 2),
    }
    print(f"speedup (daemon images/s over tutorial images/s): {results['speedup']}x", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    ok = (
        daemon["exit_code"] == 0
        and daemon["outputs"] == scenario.images
        and daemon["images_submitted_more_than_once"] == 0
        and tutorial["outputs"] == scenario.tutorial_images
    )
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
