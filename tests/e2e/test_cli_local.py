"""The real `cutoutd` command on a local folder with the real bundled model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tests.e2e.conftest import CUTOUTD, run_cutoutd
from tests.helpers import alpha_iou, write_shape

WriteConfig = Callable[..., Path]


def make_inputs(
    root: Path, count: int, size: tuple[int, int] = (320, 240)
) -> dict[str, np.ndarray]:
    masks = {}
    for n in range(count):
        shape = "ellipse" if n % 2 else "rectangle"
        color = (20 + (13 * n) % 200, 60 + n, 210 - 7 * n)  # unique: no dedupe
        masks[f"img{n:02d}.jpg"] = write_shape(
            root / "input" / f"img{n:02d}.jpg", size=size, shape=shape, color=color
        )
    return masks


def ledger_rows(config: Path) -> list[dict[str, object]]:
    listing = run_cutoutd("--config", str(config), "ledger", "list", "--format", "json")
    assert listing.returncode == 0, listing.stderr
    rows: list[dict[str, object]] = json.loads(listing.stdout)
    return rows


def test_version() -> None:
    result = run_cutoutd("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("cutoutd ")


def test_run_once_cuts_out_archives_and_records(tmp_path: Path, write_config: WriteConfig) -> None:
    root = tmp_path / "RemoveBGProcess"
    masks = make_inputs(root, 4)
    config = write_config(root)
    result = run_cutoutd("--config", str(config), "run", "--once")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "processed 4: 4 succeeded, 0 failed, 0 skipped; 0 still pending"
    for name, mask in masks.items():
        output = root / "output" / name.replace(".jpg", ".png")
        assert alpha_iou(output.read_bytes(), mask) >= 0.9, name
        assert (root / "archive" / name).exists()
        assert not (root / "input" / name).exists()
    rows = ledger_rows(config)
    assert {r["status"] for r in rows} == {"succeeded"}
    for row in rows:
        for key in ("path", "rev", "content_hash", "status", "attempts", "output_path", "error",
                    "discovered_at", "finished_at"):  # fmt: skip
            assert key in row
    # every stderr line is a JSON log record with an event key
    records = [json.loads(line) for line in result.stderr.splitlines() if line.strip()]
    assert any(r["event"] == "cutout.succeeded" for r in records)
    assert any(r["event"] == "ledger.opened" for r in records)
    # a second run finds nothing to do
    again = run_cutoutd("--config", str(config), "run", "--once")
    assert again.returncode == 0
    assert again.stdout.startswith("processed 0:")


def test_changed_file_is_processed_again(tmp_path: Path, write_config: WriteConfig) -> None:
    root = tmp_path / "root"
    write_shape(root / "input" / "a.jpg", shape="rectangle")
    config = write_config(root, '[archive]\npolicy = "keep"\n')
    assert run_cutoutd("--config", str(config), "run", "--once").returncode == 0
    first = (root / "output" / "a.png").read_bytes()
    mask = write_shape(root / "input" / "a.jpg", shape="ellipse", color=(20, 160, 40))
    os.utime(root / "input" / "a.jpg", (time.time() + 5, time.time() + 5))
    result = run_cutoutd("--config", str(config), "run", "--once")
    assert result.stdout.startswith("processed 1: 1 succeeded"), result.stdout
    assert (root / "output" / "a.png").read_bytes() != first
    assert alpha_iou((root / "output" / "a.png").read_bytes(), mask) >= 0.9
    assert [r["status"] for r in ledger_rows(config)] == ["succeeded", "succeeded"]


def test_bad_inputs_fail_clearly_and_exit_1(tmp_path: Path, write_config: WriteConfig) -> None:
    root = tmp_path / "root"
    write_shape(root / "input" / "good.jpg")
    (root / "input" / "zero.jpg").write_bytes(b"")
    (root / "input" / "notes.png").write_text("hello")
    good = (root / "input" / "good.jpg").read_bytes()
    (root / "input" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    config = write_config(root)
    result = run_cutoutd("--config", str(config), "run", "--once")
    assert result.returncode == 1
    assert "1 succeeded, 3 failed" in result.stdout
    rows = {r["path"]: r for r in ledger_rows(config)}
    assert rows["good.jpg"]["status"] == "succeeded"
    for name in ("zero.jpg", "notes.png", "truncated.jpg"):
        assert rows[name]["status"] == "failed"
        assert rows[name]["error"]
        assert (root / "failed" / name).exists()


def test_check_and_config_errors(tmp_path: Path, write_config: WriteConfig) -> None:
    root = tmp_path / "root"
    config = write_config(root)
    result = run_cutoutd("--config", str(config), "check")
    assert result.returncode == 0, result.stderr
    assert "engine:  local: ready on onnxruntime " in result.stdout
    assert "ExecutionProvider (" in result.stdout and ", fp32, " in result.stdout
    assert "storage: local folder" in result.stdout
    assert f"root:    {root.resolve()} does not exist: created" in result.stdout
    assert (root / "input").is_dir() and (root / "failed").is_dir()
    bad = tmp_path / "bad.toml"
    bad.write_text('[source]\nkind = "ftp"\npoll_interval = 0\n[engine]\nmode = "blur"\n')
    result = run_cutoutd("--config", str(bad), "check")
    assert result.returncode == 78
    for key in ("source.kind:", "source.poll_interval:", "engine.mode:"):
        assert key in result.stderr
    assert run_cutoutd("--config", str(tmp_path / "missing.toml"), "check").returncode == 78


def test_check_fails_when_the_requested_device_is_missing(
    tmp_path: Path, write_config: WriteConfig
) -> None:
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this machine has onnxruntime-gpu: CUDA is not missing here")
    config = write_config(tmp_path / "root", '[engine]\ndevice = "cuda"\n')
    result = run_cutoutd("--config", str(config), "check")
    assert result.returncode == 69, result.stderr
    assert 'device = "cuda" but this onnxruntime has no CUDA provider' in result.stderr
    assert "pip install onnxruntime-gpu" in result.stderr
    assert "ready" not in result.stdout
    # run --once loads the model while it scans: the failure still stops it, nothing lost
    write_shape(tmp_path / "root" / "input" / "a.png")
    result = run_cutoutd("--config", str(config), "run", "--once")
    assert result.returncode == 69, result.stderr
    assert "no CUDA provider" in result.stderr
    assert (tmp_path / "root" / "input" / "a.png").exists()
    assert not list((tmp_path / "root" / "output").iterdir())


def test_sigterm_mid_run_then_restart_handles_each_image_once(
    tmp_path: Path, write_config: WriteConfig
) -> None:
    root = tmp_path / "root"
    masks = make_inputs(root, 16, size=(480, 360))
    config = write_config(root, "[engine]\nworkers = 1\n")
    process = subprocess.Popen([CUTOUTD, "--config", str(config), "run", "--once"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list((root / "output").glob("*.png"))) < 3:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    out, _err = process.communicate(timeout=60)
    assert process.returncode == 0
    assert "(interrupted)" in out
    done_before = len(list((root / "output").glob("*.png")))
    assert 3 <= done_before < 16
    result = run_cutoutd("--config", str(config), "run", "--once")
    assert result.returncode == 0, result.stderr
    rows = ledger_rows(config)
    assert sorted(r["path"] for r in rows) == sorted(masks)
    assert all(r["status"] == "succeeded" and r["attempts"] == 1 for r in rows), rows
    assert sorted(p.name for p in (root / "output").iterdir()) == sorted(
        n.replace(".jpg", ".png") for n in masks
    )
    assert sorted(p.name for p in (root / "archive").iterdir()) == sorted(masks)
    assert list((root / "input").iterdir()) == []


def test_run_picks_up_new_files_and_stops_on_sigterm(
    tmp_path: Path, write_config: WriteConfig
) -> None:
    root = tmp_path / "root"
    config = write_config(root)
    process = subprocess.Popen([CUTOUTD, "--config", str(config), "run"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not (root / "input").is_dir() and time.monotonic() < deadline:
            time.sleep(0.05)
        mask = write_shape(root / "input" / "late.jpg")
        output = root / "output" / "late.png"
        while not output.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert alpha_iou(output.read_bytes(), mask) >= 0.9
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=60)
    assert process.returncode == 0
