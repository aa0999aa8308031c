"""Which parts of u2netp survive int8? A per-stage sensitivity sweep, then a greedy mix.

    python3 -m venv /tmp/sweep && /tmp/sweep/bin/pip install -e '.[local]' onnx sympy
    /tmp/sweep/bin/python bench/precision_sweep.py --photos DIR [--calibration DIR]

`onnx` and `sympy` (for onnxruntime's quantization tools) are not project dependencies.
For each of U²-Net small's 13 stages (six encoder stages, five decoder stages, the six side
outputs, the fusion), quantizes only that stage's convolutions to int8 (onnxruntime QDQ,
per-channel s8 weights, u8 activations, MinMax calibration on the shipped sample photos in
examples/samples, on an opset-13 copy of the model), and measures on `--photos` how far
its masks move from fp32: worst IoU of alpha >= 128 (and which photo), how many photos
fall below 0.99, and the mean absolute difference, at the model's 320x320. Then adds the
stages that pass alone, least sensitive first, while every photo keeps IoU >= --gate, and
times each kept mix (2 single-threaded runs at once, as the engine runs them). Figures
and their reading: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)

from daemon import imaging
from daemon.engines import local
from daemon.engines.u2net_io import mask_plane, model_input

# The first convolution of each stage, in graph order (u2netp.onnx's node names).
STAGE_STARTS = {
    "stage1": "Conv_0",
    "stage2": "Conv_136",
    "stage3": "Conv_247",
    "stage4": "Conv_333",
    "stage5": "Conv_394",
    "stage6": "Conv_415",
    "stage5d": "Conv_455",
    "stage4d": "Conv_495",
    "stage3d": "Conv_575",
    "stage2d": "Conv_680",
    "stage1d": "Conv_810",
    "sides": "Conv_945",
    "fuse": "Conv_1047",
}


def stages_of(model: onnx.ModelProto) -> dict[str, list[str]]:
    """Every Conv node's name, grouped by the stage it belongs to."""
    groups: dict[str, list[str]] = {name: [] for name in STAGE_STARTS}
    starts = {node: stage for stage, node in STAGE_STARTS.items()}
    current = "stage1"
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        current = starts.get(node.name, current)
        groups[current].append(node.name)
    return groups


class Tensors(CalibrationDataReader):  # type: ignore[misc]
    def __init__(self, name: str, tensors: list[np.ndarray]) -> None:
        self._feeds = iter([{name: t} for t in tensors])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def photos_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".png"))


def tensors_from(folder: Path) -> list[np.ndarray]:
    return [model_input(imaging.decode_image(p.read_bytes())) for p in photos_in(folder)]


def quantized(opset13: Path, out: Path, calibration: list[np.ndarray], convs: list[str]) -> Path:
    model = onnx.load(str(opset13))
    every = [n.name for n in model.graph.node if n.op_type == "Conv"]
    quantize_static(
        str(opset13),
        str(out),
        Tensors(model.graph.input[0].name, calibration),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=["Conv"],
        nodes_to_exclude=[n for n in every if n not in convs],
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
    )
    return out


def session(path: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def planes(path: Path, tensors: list[np.ndarray]) -> list[np.ndarray]:
    s = session(path)
    name = s.get_inputs()[0].name
    return [mask_plane(s.run(None, {name: t})[0]) for t in tensors]


def compare(
    reference: list[np.ndarray], candidate: list[np.ndarray], names: list[str]
) -> dict[str, Any]:
    ious, diffs = [], []
    for a, b in zip(reference, candidate, strict=True):
        x, y = a >= 128, b >= 128
        union = int((x | y).sum())
        ious.append(1.0 if union == 0 else int((x & y).sum()) / union)
        diffs.append(float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean()))
    worst = int(np.argmin(ious))
    below = sum(iou < 0.99 for iou in ious)
    return {
        "worst_iou": ious[worst],
        "worst_photo": names[worst],
        "photos_below_0.99": below,
        "mean_diff": float(np.mean(diffs)),
    }


def ms_per_image(path: Path, tensor: np.ndarray, runs: int = 6) -> float:
    """Wall ms per image with two single-threaded runs at once (the engine's way)."""
    s = session(path)
    name = s.get_inputs()[0].name
    s.run(None, {name: tensor})

    def loop() -> None:
        for _ in range(runs):
            s.run(None, {name: tensor})

    threads = [threading.Thread(target=loop) for _ in range(2)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return 1000 * (time.perf_counter() - started) / (2 * runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=Path, required=True)
    parser.add_argument("--calibration", type=Path, default=Path("examples/samples"))
    parser.add_argument("--gate", type=float, default=0.995)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    source = local.locate_model(local.MODELS["u2netp"])
    scratch = Path(tempfile.mkdtemp(prefix="sweep-"))
    opset13 = scratch / "u2netp-opset13.onnx"
    onnx.save(onnx.version_converter.convert_version(onnx.load(str(source)), 13), str(opset13))
    groups = stages_of(onnx.load(str(opset13)))
    calibration, tensors = tensors_from(args.calibration), tensors_from(args.photos)
    names = [path.name for path in photos_in(args.photos)]
    reference = planes(opset13, tensors)
    record: dict[str, Any] = {"fp32_ms": ms_per_image(opset13, tensors[0]), "stages": {}}
    print(f"fp32: {record['fp32_ms']:.0f} ms/image", flush=True)
    for stage, convs in groups.items():
        path = quantized(opset13, scratch / f"{stage}.onnx", calibration, convs)
        record["stages"][stage] = compare(reference, planes(path, tensors), names)
        print(f"only {stage} int8 ({len(convs)} convs): {record['stages'][stage]}", flush=True)
    # Only stages that pass alone can pass together; least sensitive first.
    passing = [s for s in groups if record["stages"][s]["worst_iou"] >= args.gate]
    order = sorted(passing, key=lambda s: record["stages"][s]["mean_diff"])
    kept: list[str] = []
    record["greedy"] = []
    for stage in order:
        trial = [*kept, stage]
        convs = [conv for s in trial for conv in groups[s]]
        path = quantized(opset13, scratch / "mix.onnx", calibration, convs)
        score = compare(reference, planes(path, tensors), names)
        accepted = score["worst_iou"] >= args.gate
        if accepted:
            kept = trial
            score["ms"] = ms_per_image(path, tensors[0])
        record["greedy"].append({"add": stage, "accepted": accepted, **score})
        print(f"+{stage}: {'kept' if accepted else 'refused'} {score}", flush=True)
    record["int8_stages"] = kept
    print(json.dumps(record["int8_stages"]))
    if args.json:
        args.json.write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
