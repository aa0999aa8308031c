"""onnxruntime for the local engine: which device runs the model, the session, one run.

`[engine] device` picks the hardware. "auto" (the default) takes CUDA when onnxruntime-gpu
is installed and its CUDA provider loads, else the CPU, and says which in `Hardware`.
"cpu" and "cuda" are demands: a device that is asked for and missing raises
`EngineUnavailableError`, never a quiet fall back to the CPU (onnxruntime-gpu itself falls
back quietly when the CUDA libraries are missing, so the session's own providers are
checked after it is built).

onnxruntime is imported lazily, so that this module imports without the `local` extra.
"""

from __future__ import annotations

import ctypes
import functools
import importlib
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daemon.errors import EngineUnavailableError

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")
CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
INSTALL_HINT = "pip install 'cutoutd[local]'"
_RUNTIME_MODULES = ("onnxruntime", "numpy", "PIL")
CUDA_HINT = "pip uninstall onnxruntime && pip install onnxruntime-gpu (with CUDA 12 and cuDNN 9)"
_SHRINK_ARENA = ("memory.enable_memory_arena_shrinkage", "cpu:0")
arena_lock = threading.Lock()


@dataclass(frozen=True, slots=True)
class Hardware:
    """What runs the model, for the start-up log, `cutoutd check` and /metrics."""

    runtime: str  # "onnxruntime 1.25.1"
    provider: str  # onnxruntime's execution provider: "CPUExecutionProvider", ...
    device: str  # "cpu" or "cuda"
    precision: str  # "fp32"
    threads: int  # intra-op threads per run (CPU)
    model_runs: int  # runs in the model at once

    def line(self) -> str:
        return (
            f"{self.runtime}, {self.provider} ({self.device}), {self.precision}, "
            f"{self.model_runs} run(s) at once x {self.threads} thread(s)"
        )


def providers_for(device: str, available: list[str]) -> list[str]:
    """The execution providers to ask onnxruntime for, in order of preference."""
    if device == "cpu":
        return [CPU]
    if device == "cuda":
        if CUDA not in available:
            raise EngineUnavailableError(
                'local engine: [engine] device = "cuda" but this onnxruntime has no CUDA '
                f"provider (it offers {', '.join(available)}); install it with: {CUDA_HINT}"
            )
        return [CUDA]
    if device == "auto":
        return [CUDA, CPU] if CUDA in available else [CPU]
    raise ValueError(f"unknown device {device!r}; expected one of {DEVICES}")


def check_providers(device: str, wanted: list[str], active: list[str]) -> str:
    """The provider that runs the model; raises when `device` demanded one that did not load."""
    if device == "cuda" and CUDA not in active:
        raise EngineUnavailableError(
            'local engine: [engine] device = "cuda" but the CUDA provider did not load '
            "(missing CUDA or cuDNN libraries? onnxruntime's own message is above); "
            f'install them, or set device = "cpu". Loaded: {", ".join(active)}'
        )
    if CUDA in wanted and CUDA not in active:
        log.warning(
            "local engine: the CUDA provider is installed but did not load; the model runs "
            "on the CPU",
            extra={"event": "engine.device_unavailable", "device": "cuda"},
        )
    return CUDA if CUDA in active else CPU


def runtime_version() -> str:
    import onnxruntime as ort

    return f"onnxruntime {ort.__version__}"


@functools.cache
def register_process_arena() -> bool:
    """Register, once per process, a CPU arena that grows by exactly what is asked; sessions
    opt in with `session.use_env_allocators`. False where onnxruntime cannot: each session
    then keeps its own arena. Call it under `arena_lock`."""
    import onnxruntime as ort

    info = ort.OrtMemoryInfo(
        "Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT
    )
    same_as_requested = 1  # max_mem 0 (no limit), defaults for the rest
    try:
        ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, same_as_requested, -1, -1))
    except Exception as exc:  # onnxruntime's own error types
        log.warning(
            "local engine: no shared arena (%s); each session keeps its own",
            exc,
            extra={"event": "engine.arena_unavailable"},
        )
        return False
    return True


def session_options(threads: int, *, spin: bool, shared_arena: bool) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.enable_mem_pattern = False  # one pre-planned block per run: ~540 MB peak, not ~350
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    if shared_arena:
        options.add_session_config_entry("session.use_env_allocators", "1")
    # Weights outside the arena, so that shrinking it never has to step around them.
    options.add_session_config_entry("session.use_device_allocator_for_initializers", "1")
    if not spin:  # idle model threads must not burn the cores other images are encoded on
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def open_session(path: Path, options: Any, providers: list[str]) -> Any:
    """An onnxruntime session for `path` on `providers`."""
    import onnxruntime as ort

    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:  # onnxruntime's own Fail/InvalidProtobuf/NoSuchFile types
        raise EngineUnavailableError(f"local engine: cannot load {path}: {exc}") from exc


def available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def run_model(session: Any, tensor: np.ndarray, *, shrink_arena: bool = False) -> np.ndarray:
    """The fused map (output 0) for one 1x3x320x320 input."""
    feeds = {session.get_inputs()[0].name: tensor}
    output = session.get_outputs()[0].name
    result: np.ndarray = session.run([output], feeds, _run_options(shrink_arena))[0]
    return result


class WholeModel:
    """The model in one session: every run goes through all of it."""

    def __init__(self, session: Any) -> None:
        self.session = session

    def providers(self) -> list[str]:
        return list(self.session.get_providers())

    def run(self, tensor: np.ndarray, *, shrink_arena: bool = False) -> np.ndarray:
        return run_model(self.session, tensor, shrink_arena=shrink_arena)


class SplitModelRun:
    """The model as two sessions (see `model_split`): the head may run for several images
    at once, the tail for one at a time, since it holds the run's memory peak. The tail's
    output is the whole model's, bit for bit."""

    def __init__(self, head: Any, tail: Any, crossing: tuple[str, ...]) -> None:
        self.head = head
        self.tail = tail
        self.crossing = list(crossing)
        self._tail_lock = threading.Lock()

    def providers(self) -> list[str]:
        return list(self.tail.get_providers())

    def run(self, tensor: np.ndarray, *, shrink_arena: bool = False) -> np.ndarray:
        options = _run_options(shrink_arena)
        middle = self.head.run(self.crossing, {self.head.get_inputs()[0].name: tensor}, options)
        if shrink_arena:  # the head's outputs may sit in the arena: copy them out of it
            import numpy as np

            middle = [np.array(value, copy=True) for value in middle]
        feeds = dict(zip(self.crossing, middle, strict=True))
        del middle
        with self._tail_lock:
            output = self.tail.get_outputs()[0].name
            result: np.ndarray = self.tail.run([output], feeds, options)[0]
        if shrink_arena:
            feeds.clear()
            trim_heap()  # the copies went to the C heap, which keeps freed memory
        return result


def trim_heap() -> None:
    """Hand the C heap's free memory back to the OS (glibc's `malloc_trim`; elsewhere a no-op)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.malloc_trim(0)


def _run_options(shrink_arena: bool) -> Any:
    if not shrink_arena:
        return None
    import onnxruntime as ort

    options = ort.RunOptions()
    options.add_run_config_entry(*_SHRINK_ARENA)
    return options


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
