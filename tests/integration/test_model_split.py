"""The model cut in two (daemon/engines/model_split.py): derived once, cached with hashes,
and bit for bit the whole model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from daemon.engines import model_split
from daemon.engines.local import MODELS, LocalEngine, locate_model
from daemon.engines.model_split import CUTS, crossing_tensors, derive, split_model
from daemon.engines.onnx_session import SplitModelRun, WholeModel
from daemon.engines.u2net_io import model_input
from daemon.errors import EngineUnavailableError
from tests.helpers import PHOTOS

pytest.importorskip("onnxruntime", reason="the local engine needs the `local` extra")
pytest.importorskip("onnx", reason="cutting the model needs the `local` extra")


@pytest.fixture(scope="module")
def source() -> Path:
    return locate_model(MODELS["u2netp"])


def session(path: Path):  # type: ignore[no-untyped-def]
    import onnxruntime

    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_crossing_tensors_are_those_made_before_the_cut_and_read_after_it() -> None:
    inputs = [["x"], ["a"], ["a", "b"], ["c", "a", "w"]]
    outputs = [["a"], ["b"], ["c"], ["y"]]
    assert crossing_tensors(inputs, outputs, 2) == ["a", "b"]
    assert crossing_tensors(inputs, outputs, 3) == ["c", "a"]
    assert crossing_tensors(inputs, outputs, 0) == []


def test_the_halves_give_the_whole_models_output_bit_for_bit(source: Path, tmp_path: Path) -> None:
    split = split_model(source, CUTS["u2netp"], tmp_path)
    whole = WholeModel(session(source))
    halves = SplitModelRun(session(split.head), session(split.tail), split.crossing)
    for photo in sorted(PHOTOS.glob("*.jpg"))[:3]:
        tensor = model_input(Image.open(photo).convert("RGB"))
        assert np.array_equal(halves.run(tensor), whole.run(tensor)), photo.name


def test_the_halves_are_cached_with_their_hashes(
    source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = split_model(source, CUTS["u2netp"], tmp_path)
    manifest = json.loads((first.head.parent / "manifest.json").read_text())
    assert manifest["source_sha256"] == model_split.sha256_of(source)
    assert manifest["tail_sha256"] == model_split.sha256_of(first.tail)
    assert manifest["cut"] == CUTS["u2netp"] and manifest["license"].startswith("Apache-2.0")

    def no_derive(*args: object) -> None:
        raise AssertionError("derived again although the cache is good")

    monkeypatch.setattr(model_split, "_derive_in_child", no_derive)
    assert split_model(source, CUTS["u2netp"], tmp_path) == first


def test_a_damaged_half_is_derived_again(source: Path, tmp_path: Path) -> None:
    first = split_model(source, CUTS["u2netp"], tmp_path)
    good = first.tail.read_bytes()
    first.tail.write_bytes(good[:-100])
    again = split_model(source, CUTS["u2netp"], tmp_path)
    assert again.tail.read_bytes() == good  # reproducible: the same bytes as before


def test_an_unknown_cut_says_so(source: Path, tmp_path: Path) -> None:
    with pytest.raises(EngineUnavailableError, match="'No_such_node' is not in"):
        derive(source, "No_such_node", tmp_path / "out")
    with pytest.raises(
        EngineUnavailableError, match=r"cannot cut the model in two: .*No_such_node"
    ):
        split_model(source, "No_such_node", tmp_path)


def test_the_engine_cuts_the_model_only_for_two_runs(tmp_path: Path) -> None:
    pair = LocalEngine(workers=2, model_runs=2, cache=tmp_path, idle_release=None)
    single = LocalEngine(workers=2, model_runs=1, idle_release=None)
    pair.start()
    single.start()
    try:
        assert (pair.cut, single.cut) == (CUTS["u2netp"], None)
        assert list((tmp_path / "models").iterdir())
        photo = Image.open(sorted(PHOTOS.glob("*.jpg"))[0]).convert("RGB")
        assert pair.predict_mask(photo).tobytes() == single.predict_mask(photo).tobytes()
    finally:
        pair.close()
        single.close()
