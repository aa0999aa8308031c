"""U²-Net small cut in two, so that two images' model runs never hold their memory peaks at once.

A run of u2netp at 320x320 peaks when its last decoder stage (stage1d) upsamples to full
resolution and concatenates with stage1's 64-channel skip tensor: ~230 MB of activations
there, against ~125 MB at any point before (measured by cutting at successive nodes;
docs/benchmarks.md). The local engine runs two images at once; when both reach stage1d
together the process peaks ~100 MB higher. Cut before node `Constant_806` (the sizes of
stage1d's Resize), the head may run for two images at once while the tail runs for one at a
time. The two files hold the original's nodes and weights unchanged, so the mask is bit for
bit the whole model's (tests/integration/test_model_split.py).

The cut files are derived from the bundled `u2netp.onnx` by `derive()` with the `onnx`
package (Apache-2.0, like the model), in a child process (`python -m
daemon.engines.model_split SOURCE CUT OUT_DIR`) so that onnx's own memory never stays in the
daemon. They are cached in a folder named after the source file's SHA-256 and the cut, with
a manifest holding every file's SHA-256 and the model's licence; `split_model()` checks it
and derives again when anything differs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from daemon.errors import EngineUnavailableError

# Per model: the first node of the tail (nodes are named and ordered in the ONNX file).
CUTS: dict[str, str] = {"u2netp": "Constant_806"}
MANIFEST = "manifest.json"
FORMAT = 1  # bump when derive() changes what it writes
DERIVE_TIMEOUT = 300.0


@dataclass(frozen=True, slots=True)
class SplitModel:
    """The two halves of a model: `head` runs from the input to `crossing` (the tensors the
    tail reads, in the head's output order), `tail` from them to the model's outputs."""

    head: Path
    tail: Path
    crossing: tuple[str, ...]
    cut: str


def cache_directory() -> Path:
    """`$CACHE_DIRECTORY` under systemd (`CacheDirectory=`), else `$XDG_CACHE_HOME/cutoutd`
    (~/.cache/cutoutd by default)."""
    cache = os.environ.get("CACHE_DIRECTORY")
    if cache:
        return Path(cache.split(":")[0])
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "cutoutd"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def split_model(source: Path, cut: str, cache: Path | None = None) -> SplitModel:
    """The cached halves of `source` cut before node `cut`, derived first when missing or
    when any file's hash differs from the manifest. EngineUnavailableError says why not."""
    source_hash = sha256_of(source)
    folder = (cache or cache_directory()) / "models" / f"{source_hash[:16]}-{cut}-v{FORMAT}"
    split = _load(folder, source_hash, cut)
    if split is not None:
        return split
    _derive_in_child(source, cut, folder)
    split = _load(folder, source_hash, cut)
    if split is None:
        raise EngineUnavailableError(f"local engine: the model halves in {folder} do not verify")
    return split


def _load(folder: Path, source_hash: str, cut: str) -> SplitModel | None:
    """The halves in `folder` if its manifest matches the source and every file's hash."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if manifest.get("source_sha256") != source_hash or manifest.get("cut") != cut:
        return None
    if manifest.get("format") != FORMAT:
        return None
    head, tail = folder / "head.onnx", folder / "tail.onnx"
    for path, key in ((head, "head_sha256"), (tail, "tail_sha256")):
        if not path.is_file() or sha256_of(path) != manifest.get(key):
            return None
    return SplitModel(head, tail, tuple(manifest["crossing"]), cut)


def _derive_in_child(source: Path, cut: str, folder: Path) -> None:
    command = [sys.executable, "-m", "daemon.engines.model_split", str(source), cut, str(folder)]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=DERIVE_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EngineUnavailableError(f"local engine: cannot cut the model in two: {exc}") from exc
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise EngineUnavailableError(f"local engine: cannot cut the model in two: {reason}")


def crossing_tensors(
    node_inputs: list[list[str]], node_outputs: list[list[str]], cut: int
) -> list[str]:
    """Tensors made by nodes before index `cut` and read by a node at or after it, in the
    order the tail first reads them."""
    made_before = {name for outputs in node_outputs[:cut] for name in outputs}
    crossing: list[str] = []
    for inputs in node_inputs[cut:]:
        for name in inputs:
            if name in made_before and name not in crossing:
                crossing.append(name)
    return crossing


def derive(source: Path, cut: str, folder: Path) -> SplitModel:
    """Write `head.onnx`, `tail.onnx` and the manifest into `folder` (atomically: a temporary
    folder renamed into place). Needs the `onnx` package."""
    try:
        import onnx
        from onnx import utils
    except ImportError as exc:
        raise EngineUnavailableError(
            f"local engine: the onnx package is missing ({exc}); "
            "install it with: pip install 'cutoutd[local]'"
        ) from None
    graph = onnx.load(str(source), load_external_data=False).graph
    names = [node.name for node in graph.node]
    if cut not in names:
        raise EngineUnavailableError(f"local engine: node {cut!r} is not in {source}")
    index = names.index(cut)
    crossing = crossing_tensors(
        [list(node.input) for node in graph.node], [list(node.output) for node in graph.node], index
    )
    inputs = [value.name for value in graph.input]
    outputs = [value.name for value in graph.output]
    folder.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".split-", dir=folder.parent))
    try:
        head, tail = work / "head.onnx", work / "tail.onnx"
        utils.extract_model(str(source), str(head), inputs, crossing, check_model=True)
        utils.extract_model(str(source), str(tail), crossing, outputs, check_model=True)
        manifest = {
            "format": FORMAT,
            "source": source.name,
            "source_sha256": sha256_of(source),
            "cut": cut,
            "crossing": crossing,
            "onnx": onnx.__version__,
            "head_sha256": sha256_of(head),
            "tail_sha256": sha256_of(tail),
            "license": "Apache-2.0 (derived from U^2-Net, https://github.com/xuebinqin/U-2-Net)",
        }
        (work / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(work, folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return SplitModel(folder / "head.onnx", folder / "tail.onnx", tuple(crossing), cut)


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: python -m daemon.engines.model_split SOURCE CUT OUT_DIR", file=sys.stderr)
        return 2
    try:
        derive(Path(argv[0]), argv[1], Path(argv[2]))
    except EngineUnavailableError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
