"""Bad inputs (issue 7, item 3) through the real `cutoutd run`: batches that mix good images
with hostile or odd ones. Each odd input ends `failed` (moved to failed/) or `skipped`,
with a reason a person can read in the ledger; the good images of the same batch are cut
out and archived as usual; nothing is lost, duplicated or left half-done.

- a local folder with the local engine (the real model), `run --once`;
- the Dropbox fake with the Photoshop fake, `run --once`: Adobe's 6000 px limit and media
  types, Dropbox's case-insensitive names;
- the Dropbox fake with the Photoshop fake, `run`: an input replaced, and one deleted,
  while its Adobe job runs.

Each scenario reports its per-input outcomes as figures (`bad_inputs_*.json` under
`$CUTOUTD_RESULTS_DIR`).
"""

from __future__ import annotations

import re
import struct
import time
import unicodedata
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw

from tests.e2e.conftest import run_cutoutd
from tests.fakes.dropbox_server import FakeDropbox
from tests.fakes.photoshop_server import FakeJob, FakePhotoshop, source_name
from tests.helpers import alpha_iou, encode, shape_image
from tests.reliability.harness import (
    PERIOD,
    ROOT,
    Daemon,
    Figures,
    dropbox_sections,
    environment,
    is_png,
    ledger_rows,
    local_sections,
    merge,
    report,
    run_measured,
    wait_until,
    write_config,
)

SIZE = (160, 120)  # the model sees 320x320 anyway; at 96x72 its masks get coarse
LARGE = 160 * 1024 * 1024  # over Dropbox's 150 MiB single-upload limit
HUGE = 7000  # px: over Adobe's 6000 x 6000 input limit
LOCAL_MAX_PIXELS = 40_000_000  # 7000 x 7000 = 49 MP would pass the local default of 50 MP
# A HEIC file's first bytes (an ISO-BMFF `ftyp` box with the `heic` brand, then `meta`):
# Pillow cannot read HEIC without a plugin, and pillow-heif is no dependency of cutoutd.
HEIC = (
    struct.pack(">I", 24) + b"ftypheic" + b"\x00\x00\x00\x00" + b"mif1heic"
    + struct.pack(">I", 40) + b"meta" + bytes(32)
)  # fmt: skip


# -- samples ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One input and what must become of it."""

    name: str  # path under input/
    kind: str  # what it is, for the figures
    data: bytes
    # succeeded | failed | skipped | ignored (never a ledger row) | superseded (Dropbox:
    # a later sample of the same name, in another case, replaced it before any listing)
    expect: str
    reason: str = ""  # regex the ledger's error must match
    mask: np.ndarray | None = None  # succeeded: the subject, to check the cutout
    size: int | None = None  # written as `data` followed by zeros up to this many bytes
    output: str | None = None  # succeeded: the output's name, when not derived from `name`


def _picture(n: int, size: tuple[int, int] = SIZE) -> tuple[Image.Image, np.ndarray]:
    """A distinct shape on a flat backdrop (distinct bytes: dedupe would skip copies)."""
    color = (30 + (n * 37) % 150, 40 + (n * 53) % 130, 200 - (n * 29) % 150)
    return shape_image(size, shape="ellipse" if n % 2 else "rectangle", color=color,
                       box=(0.2 + (n % 5) * 0.03, 0.2, 0.7, 0.8 - (n % 3) * 0.05))  # fmt: skip


def _jpeg(n: int) -> tuple[bytes, np.ndarray]:
    image, mask = _picture(n)
    return encode(image, "JPEG", quality=95), mask


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png_16bit_rgb(image: Image.Image) -> bytes:
    """A 48-bit RGB PNG (Pillow reads these but cannot write them)."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.uint16) * 257
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in pixels)
    header = struct.pack(">IIBBBBB", image.width, image.height, 16, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", zlib.compress(rows)) + _png_chunk(b"IEND", b""))  # fmt: skip


def _png_16bit_grey(image: Image.Image) -> bytes:
    grey = np.asarray(image.convert("L"), dtype=np.uint16) * 257
    return encode(Image.fromarray(grey.astype(np.uint16)), "PNG")


def _animated_gif(n: int) -> tuple[bytes, np.ndarray]:
    first, mask = _picture(n)
    second, _ = _picture(n + 1)
    return encode(first, "GIF", save_all=True, append_images=[second], duration=100), mask


@cache
def _huge_jpeg() -> bytes:
    image = Image.new("RGB", (HUGE, HUGE), (235, 235, 235))
    ImageDraw.Draw(image).ellipse((2000, 2000, 5000, 5000), fill=(200, 30, 30))
    return encode(image, "JPEG", quality=80)


def common_samples() -> list[Sample]:
    """The inputs both batches share."""
    good_1, good_1_mask = _jpeg(1)
    good_2_image, good_2_mask = _picture(2)
    truncated, _ = _jpeg(3)
    cmyk_image, cmyk_mask = _picture(4)
    deep_image, deep_mask = _picture(5)
    unicode_data, unicode_mask = _jpeg(6)
    folder_data, _ = _jpeg(7)
    return [
        Sample("good 1.jpg", "good JPEG", good_1, "succeeded", mask=good_1_mask),
        Sample("good 2.png", "good PNG", encode(good_2_image, "PNG"), "succeeded",
               mask=good_2_mask),
        Sample("zero.jpg", "zero bytes", b"", "failed", r"empty file|not an image"),
        Sample("truncated.jpg", "truncated JPEG", truncated[: len(truncated) // 2], "failed",
               r"truncated|corrupt|cannot process"),
        Sample("notes.png", "text named .png", b"shopping list: milk, eggs\n" * 40, "failed",
               r"not an image"),
        Sample("cmyk.jpg", "CMYK JPEG", encode(cmyk_image.convert("CMYK"), "JPEG", quality=95),
               "succeeded", mask=cmyk_mask),
        Sample("deep 48-bit.png", "16-bit RGB PNG", _png_16bit_rgb(deep_image), "succeeded",
               mask=deep_mask),
        Sample("Ünïcödé café #1 (v2) 100% & more.jpg", "unicode, spaces, #, %, &",
               unicode_data, "succeeded", mask=unicode_mask),
        Sample("x.jpg/inside.jpg", "a folder named x.jpg", folder_data, "ignored"),
    ]  # fmt: skip


def local_samples() -> list[Sample]:
    gif, gif_mask = _animated_gif(8)
    grey_image, grey_mask = _picture(10)
    large, large_mask = _jpeg(11)
    nfc, nfc_mask = _jpeg(12)
    nfd, nfd_mask = _jpeg(13)
    upper, upper_mask = _jpeg(14)
    lower, lower_mask = _jpeg(15)
    return [
        *common_samples(),
        Sample("huge 7000.jpg", "7000 x 7000 px (49 MP)", _huge_jpeg(), "failed",
               rf"7000x7000 .*over the {LOCAL_MAX_PIXELS // 1_000_000} MP limit"),
        Sample("animated.gif", "animated GIF", gif, "succeeded", mask=gif_mask),
        Sample("grey 16-bit.png", "16-bit grey PNG", _png_16bit_grey(grey_image), "succeeded",
               mask=grey_mask),
        Sample("photo.heic", "HEIC (no plugin)", HEIC, "failed",
               r"unsupported image format HEIC/HEIF"),
        Sample("large 160 MiB.jpg", "160 MiB JPEG (trailing data)", large, "succeeded",
               mask=large_mask, size=LARGE),
        Sample(unicodedata.normalize("NFC", "Crème.jpg"), "NFC name", nfc, "succeeded",
               mask=nfc_mask),
        Sample(unicodedata.normalize("NFD", "Crème.jpg"), "NFD name, same letters", nfd,
               "succeeded", mask=nfd_mask),
        Sample("Case.jpg", "names differing in case only", upper, "succeeded", mask=upper_mask),
        Sample("case.jpg", "names differing in case only", lower, "succeeded", mask=lower_mask),
    ]  # fmt: skip


def dropbox_samples() -> list[Sample]:
    gif, _ = _animated_gif(8)
    replaced, _ = _jpeg(16)
    case_kept, case_mask = _jpeg(17)
    shoe_jpeg, shoe_jpeg_mask = _jpeg(18)
    shoe_png_image, shoe_png_mask = _picture(19)
    return [
        *common_samples(),
        Sample("huge 7000.jpg", "7000 x 7000 px (49 MP)", _huge_jpeg(), "failed",
               r"7000x7000 exceed the maximum of 6000x6000"),
        Sample("animated.gif", "animated GIF", gif, "failed", r"unsupported image format GIF"),
        Sample("photo.heic", "HEIC", HEIC, "failed", r"not an image"),
        # Dropbox is case-insensitive: the second upload replaces the first, keeping the
        # first one's spelling; only that one revision is ever seen.
        Sample("Mixed Case.jpg", "names differing in case only (first)", replaced,
               "superseded"),
        Sample("MIXED CASE.jpg", "names differing in case only (second)", case_kept,
               "succeeded", mask=case_mask, output="Mixed Case.png"),
        # Two inputs whose outputs differ in case only: `Shoe.png` and `shoe.png` are one
        # name in Dropbox, so one of them must take its fallback name.
        Sample("Shoe.jpg", "outputs differing in case only", shoe_jpeg, "succeeded",
               mask=shoe_jpeg_mask, output="Shoe.png|Shoe.jpg.png"),
        Sample("shoe.png", "outputs differing in case only", encode(shoe_png_image, "PNG"),
               "succeeded", mask=shoe_png_mask, output="shoe.png|shoe.png.png"),
    ]  # fmt: skip


def write_local(folder: Path, samples: list[Sample]) -> None:
    for sample in samples:
        path = folder / sample.name
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as stream:
            stream.write(sample.data)
            if sample.size:
                stream.truncate(sample.size)  # sparse: fast to write, read back as zeros


# -- checking -----------------------------------------------------------------------------


@dataclass
class Areas:
    """What each storage folder holds at the end, by path relative to the folder."""

    input: dict[str, bytes]
    output: dict[str, bytes]
    archive: set[str]
    failed: set[str]


def local_areas(root: Path) -> Areas:
    def files(area: str) -> dict[str, bytes]:
        base = root / area
        return {p.relative_to(base).as_posix(): p.read_bytes() for p in base.rglob("*")
                if p.is_file() and not p.name.startswith(".")}  # fmt: skip

    return Areas(files("input"), files("output"), set(files("archive")), set(files("failed")))


def dropbox_areas(dropbox: FakeDropbox) -> Areas:
    def files(area: str) -> dict[str, bytes]:
        prefix = f"{ROOT}/{area}/"
        return {p[len(prefix) :]: d for p, d in dropbox.files_under(prefix).items()}

    return Areas(files("input"), files("output"), set(files("archive")), set(files("failed")))


def check_outcomes(
    samples: list[Sample],
    rows: list[dict[str, Any]],
    areas: Areas,
    key: Callable[[str], str],
) -> tuple[list[dict[str, Any]], list[str]]:
    """Each sample against the ledger and the storage: (per-input outcomes, problems)."""
    by_path: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_path.setdefault(key(row["path"]), []).append(row)
    outcomes, problems = [], []
    for sample in samples:
        found = by_path.get(key(sample.name), [])
        row = found[-1] if found else None
        if sample.expect == "superseded":
            outcomes.append({"input": sample.name, "kind": sample.kind, "expected": "superseded",
                             "status": "superseded", "reason": "one name in Dropbox (case-"
                             "insensitive): the next upload replaced it", "ended_in": None,
                             "output": None})  # fmt: skip
            continue
        outcome = {
            "input": sample.name,
            "kind": sample.kind,
            "expected": sample.expect,
            "status": row["status"] if row else "no ledger row",
            "reason": row["last_error"] if row else "",
            "ended_in": (row["archived_path"] or "input/ (left)") if row else "input/ (left)",
            "output": row["output_path"] if row else None,
        }
        outcomes.append(outcome)
        problems.extend(f"{sample.name}: {p}" for p in _check(sample, row, found, areas, key))
    return outcomes, problems


def _check(
    sample: Sample,
    row: dict[str, Any] | None,
    found: list[dict[str, Any]],
    areas: Areas,
    key: Callable[[str], str],
) -> Iterator[str]:
    inputs = {key(p) for p in areas.input}
    if sample.expect == "ignored":
        if found:
            yield f"has ledger rows: {[(r['status'], r['last_error']) for r in found]}"
        return
    if row is None:
        yield "no ledger row"
        return
    if len(found) != 1:
        yield f"{len(found)} ledger rows"
    if row["status"] != sample.expect:
        yield f"ended {row['status']} ({row['last_error']}), expected {sample.expect}"
        return
    if key(sample.name) in inputs:
        yield "still in input/"
    if sample.expect == "failed":
        if not re.search(sample.reason, row["last_error"] or ""):
            yield f"reason {row['last_error']!r} does not match {sample.reason!r}"
        if row["archived_path"] != f"failed/{row['path']}" or row["path"] not in areas.failed:
            yield f"not moved to failed/ (archived_path {row['archived_path']!r})"
        if row["output_path"] and row["output_path"] in areas.output:
            yield f"has an output: {row['output_path']}"
    elif sample.expect == "succeeded":
        yield from _check_output(sample, row, areas)


def _check_output(sample: Sample, row: dict[str, Any], areas: Areas) -> Iterator[str]:
    output = row["output_path"] or ""
    if sample.output is None:
        named = output == sample.name.rsplit(".", 1)[0] + ".png"
    else:  # a regex of acceptable names
        named = re.fullmatch(sample.output, output) is not None
    if not named:
        yield f"output named {output!r}, expected {sample.output or 'the input name'!r}"
    data = areas.output.get(output)
    if data is None or not is_png(data):
        yield f"output {output!r} missing or not a PNG"
    elif sample.mask is not None and alpha_iou(data, sample.mask) < 0.9:
        yield f"output is not the input's cutout (alpha IoU {alpha_iou(data, sample.mask):.2f})"
    if row["archived_path"] != f"archive/{row['path']}" or row["path"] not in areas.archive:
        yield f"not archived (archived_path {row['archived_path']!r})"


def outcome_figures(scenario: str, outcomes: list[dict[str, Any]], seconds: float) -> Figures:
    figures = Figures(scenario, len(outcomes), seconds=round(seconds, 1))
    figures.non_terminal = sum(1 for o in outcomes if o["status"] in ("pending", "processing"))
    figures.extra["outcomes"] = outcomes
    return figures


def _print_table(outcomes: list[dict[str, Any]]) -> None:
    print()
    for o in outcomes:
        print(f"  {o['kind'][:34]:34}  {o['status']:10}  {(o['reason'] or o['output'] or '')[:90]}")


# -- scenarios ----------------------------------------------------------------------------


def test_local_folder_batch_with_bad_inputs(tmp_path: Path) -> None:
    samples = local_samples()
    root = tmp_path / "RemoveBGProcess"
    write_local(root / "input", samples)
    ledger = tmp_path / "ledger.sqlite3"
    sections = merge(local_sections(root, ledger), {"engine": {"max_pixels": LOCAL_MAX_PIXELS}})
    config = write_config(tmp_path / "cutoutd.toml", sections)

    started = time.monotonic()
    result, peak_mib = run_measured("--config", str(config), "run", "--once")
    seconds = time.monotonic() - started

    rows = ledger_rows(ledger)
    outcomes, problems = check_outcomes(samples, rows, local_areas(root), key=lambda p: p)
    figures = outcome_figures("bad_inputs_local", outcomes, seconds)
    figures.extra["peak_rss_mib"] = peak_mib
    report(figures)
    _print_table(outcomes)

    assert result.returncode == 1, result.stderr[-3000:]  # some images failed
    counted = {s: sum(1 for s2 in samples if s2.expect == s) for s in ("succeeded", "failed")}
    assert result.stdout.startswith(
        f"processed {counted['succeeded'] + counted['failed']}: {counted['succeeded']} "
        f"succeeded, {counted['failed']} failed, 0 skipped"
    ), result.stdout
    assert not problems, "\n".join(problems)
    assert len(rows) == counted["succeeded"] + counted["failed"]
    assert (root / "input" / "x.jpg" / "inside.jpg").is_file()  # a folder is never an input


def test_dropbox_photoshop_batch_with_bad_inputs(
    dropbox: FakeDropbox, adobe: FakePhotoshop, tmp_path: Path
) -> None:
    samples = dropbox_samples()
    for sample in samples:
        dropbox.put_file(f"{ROOT}/input/{sample.name}", sample.data)
    assert len(dropbox.files_under(f"{ROOT}/input")) == len(samples) - 1  # case-insensitive
    ledger = tmp_path / "ledger.sqlite3"
    config = write_config(tmp_path / "cutoutd.toml", dropbox_sections(ledger, adobe))
    env = environment(dropbox, adobe)

    started = time.monotonic()
    result = run_cutoutd("--config", str(config), "run", "--once", env=env, timeout=120)
    seconds = time.monotonic() - started

    rows = ledger_rows(ledger)
    outcomes, problems = check_outcomes(samples, rows, dropbox_areas(dropbox), key=str.lower)
    figures = outcome_figures("bad_inputs_dropbox_photoshop", outcomes, seconds)
    figures.engine_submissions = adobe.submissions
    figures.extra["rejected_at_submission"] = sum(
        1 for method, path, status in adobe.log if path.endswith("remove-background")
        and status == 400
    )  # fmt: skip
    report(figures)
    _print_table(outcomes)

    assert result.returncode == 1, result.stderr[-3000:]
    assert not problems, "\n".join(problems)
    outputs = dropbox_areas(dropbox).output
    assert len({name.lower() for name in outputs}) == len(outputs)
    succeeded = [s for s in samples if s.expect == "succeeded"]
    assert len(outputs) == len(succeeded), sorted(outputs)


# -- replaced or deleted while the Adobe job runs -------------------------------------------


class HookedPhotoshop(FakePhotoshop):
    """The Photoshop fake, calling `on_submit(job)` once a submission is accepted (in the
    request's thread, before the 202 goes back): a test can change Dropbox mid-job."""

    on_submit: Callable[[FakeJob], None] | None = None

    def _accept(self, body: dict[str, Any], source_url: str, data: bytes | None) -> dict[str, Any]:
        answer = super()._accept(body, source_url, data)
        if self.on_submit is not None:
            self.on_submit(self.jobs[answer["jobId"]])
        return answer


@pytest.fixture
def hooked_adobe(dropbox: FakeDropbox) -> Iterator[HookedPhotoshop]:
    fake = HookedPhotoshop(submit_limit=3, submit_period=PERIOD, latency=0.05,
                           verify=dropbox.ca_path or True)  # fmt: skip
    fake.start()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.mark.parametrize("mode", ["run", "run --once"])
def test_input_replaced_or_deleted_while_its_adobe_job_runs(
    dropbox: FakeDropbox, hooked_adobe: HookedPhotoshop, tmp_path: Path, mode: str
) -> None:
    """`replaced.jpg` gets a new revision, and `deleted.jpg` is deleted, right after Adobe
    accepted their jobs, which then take 2 s. Under `run` (longpoll on) the new revision
    is discovered and cut out meanwhile, by another worker, in 0.05 s; `run --once` lists
    once, so the new revision waits for the next `run --once`. Either way the stale job must neither overwrite the new
    output nor archive the new content; the deleted input ends skipped with a reason;
    a bystander is unaffected."""
    old, _ = _jpeg(20)
    new, new_mask = _jpeg(21)
    doomed, _ = _jpeg(22)
    bystander, bystander_mask = _jpeg(23)
    inputs = {"replaced.jpg": old, "deleted.jpg": doomed, "bystander.jpg": bystander}
    for name, data in inputs.items():
        dropbox.put_file(f"{ROOT}/input/{name}", data)
    changed: set[str] = set()

    def change_mid_job(job: FakeJob) -> None:
        name = source_name(job)
        if name in changed or name == "bystander.jpg":
            return
        job.latency = 2.0  # this job runs long; the next ones (the new revision) do not
        changed.add(name)
        if name == "replaced.jpg":
            dropbox.put_file(f"{ROOT}/input/replaced.jpg", new)
        else:
            dropbox.delete(f"{ROOT}/input/deleted.jpg")

    hooked_adobe.on_submit = change_mid_job
    ledger = tmp_path / "ledger.sqlite3"
    config = write_config(tmp_path / "cutoutd.toml", dropbox_sections(ledger, hooked_adobe))
    env = environment(dropbox, hooked_adobe)
    started = time.monotonic()
    if mode == "run --once":
        first = run_cutoutd("--config", str(config), "run", "--once", env=env, timeout=60)
        assert first.returncode == 0, first.stderr[-3000:]
        # The new revision came after this run's listing: it waits, untouched, for the next.
        assert dropbox.files_under(f"{ROOT}/input") == {f"{ROOT}/input/replaced.jpg": new}
        assert "replaced.png" not in dropbox_areas(dropbox).output
        second = run_cutoutd("--config", str(config), "run", "--once", env=env, timeout=60)
        assert second.returncode == 0, second.stderr[-3000:]
        assert second.stdout.startswith("processed 1: 1 succeeded"), second.stdout
    else:
        daemon = Daemon(config, env, tmp_path / "logs").start()
        try:
            wait_until(lambda: _settled(ledger), 40, daemon=daemon, what="every revision to end")
        finally:
            daemon.stop()
    seconds = time.monotonic() - started

    rows = ledger_rows(ledger)
    areas = dropbox_areas(dropbox)
    by_name: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_name.setdefault(row["path"], []).append(row)
    outcomes = [
        {"input": row["path"], "rev": row["rev"], "status": row["status"],
         "reason": row["last_error"], "output": row["output_path"],
         "ended_in": row["archived_path"] or "(not moved)"}
        for row in rows
    ]  # fmt: skip
    scenario = "bad_inputs_changed_mid_job" + ("_once" if "once" in mode else "_run")
    figures = Figures(scenario, len(rows), seconds=round(seconds, 1))
    figures.extra["outcomes"] = outcomes
    figures.engine_submissions = hooked_adobe.submissions
    report(figures)
    _print_table([{**o, "kind": f"{o['input']} {o['rev'][:9]}"} for o in outcomes])

    assert changed == {"replaced.jpg", "deleted.jpg"}, changed
    assert _settled(ledger), rows
    stale, fresh = by_name["replaced.jpg"]
    assert stale["status"] == "skipped" and stale["output_path"] is None
    assert stale["archived_path"] is None  # the stale revision archived nothing
    assert re.search(r"replaced", stale["last_error"] or ""), stale["last_error"]
    assert fresh["status"] == "succeeded" and fresh["archived_path"] == "archive/replaced.jpg"
    assert dropbox.files_under(f"{ROOT}/archive")[f"{ROOT}/archive/replaced.jpg"] == new
    assert alpha_iou(areas.output["replaced.png"], new_mask) >= 0.9, "the stale result won"
    [gone] = by_name["deleted.jpg"]
    assert (gone["status"], gone["output_path"], gone["archived_path"]) == ("skipped", None, None)
    assert re.search(r"deleted", gone["last_error"] or ""), gone["last_error"]
    [kept] = by_name["bystander.jpg"]
    assert kept["status"] == "succeeded" and kept["archived_path"] == "archive/bystander.jpg"
    assert alpha_iou(areas.output["bystander.png"], bystander_mask) >= 0.9
    assert set(areas.output) == {"replaced.png", "bystander.png"}
    assert areas.archive == {"replaced.jpg", "bystander.jpg"}
    assert areas.input == {} and areas.failed == set()


def _settled(ledger: Path) -> bool:
    """Four revisions (two of replaced.jpg), all terminal, none with a move still due."""
    rows = ledger_rows(ledger)
    terminal = all(r["status"] in ("succeeded", "failed", "skipped") for r in rows)
    return len(rows) == 4 and terminal and not any(r["relocate_to"] for r in rows)
