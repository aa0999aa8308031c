"""The result spool on a real directory."""

from __future__ import annotations

import os
from pathlib import Path

from daemon.models import EncodedCutout
from daemon.spool import ResultSpool


def result(data: bytes = b"\x89PNG result") -> EncodedCutout:
    return EncodedCutout(data, "Adobe job 1")


def test_a_result_is_kept_by_row_and_job(tmp_path: Path) -> None:
    spool = ResultSpool(tmp_path / "spool", 1_000_000)
    spool.open()
    assert spool.save(7, "urn:ff:jobs:abc:1", result())
    loaded = spool.load(7, "urn:ff:jobs:abc:1")
    assert loaded is not None and loaded.data == result().data
    assert spool.load(7, "urn:ff:jobs:abc:2") is None  # another job of the row: not this one
    assert spool.load(8, "urn:ff:jobs:abc:1") is None
    assert spool.save(7, "urn:ff:jobs:abc:2", result(b"next"))  # a resubmission's result
    assert spool.load(7, "urn:ff:jobs:abc:1") is None  # the row keeps only its latest
    again = spool.load(7, "urn:ff:jobs:abc:2")
    assert again is not None and again.data == b"next"
    assert again.source == "the spooled result of job urn:ff:jobs:abc:2"
    assert spool.size() == 4
    spool.discard(7)
    assert spool.load(7, "urn:ff:jobs:abc:2") is None and spool.size() == 0


def test_it_survives_a_new_process_and_drops_half_written_files(tmp_path: Path) -> None:
    first = ResultSpool(tmp_path / "spool", 1_000_000)
    first.open()
    first.save(3, "job-3", result(b"abc"))
    (tmp_path / "spool" / ".tmp-4.x.png").write_bytes(b"half")  # a crash mid-write
    second = ResultSpool(tmp_path / "spool", 1_000_000)
    second.open()
    assert (second.load(3, "job-3") or result()).data == b"abc"
    assert [n for n in os.listdir(tmp_path / "spool") if n.startswith(".")] == []
    assert second.size() == 3
    assert (tmp_path / "spool").stat().st_mode & 0o777 == 0o700


def test_it_is_bounded(tmp_path: Path) -> None:
    spool = ResultSpool(tmp_path / "spool", 10)
    spool.open()
    assert spool.save(1, "job", result(b"123456"))
    assert not spool.save(2, "job", result(b"123456"))  # would pass 10 bytes
    assert spool.load(2, "job") is None
    assert spool.size() == 6


def test_clean_removes_rows_that_no_longer_want_their_result(tmp_path: Path) -> None:
    spool = ResultSpool(tmp_path / "spool", 1_000_000)
    spool.open()
    for item_id in (1, 2, 3):
        spool.save(item_id, "job", result())
    assert spool.clean(lambda item_id: item_id == 2) == 2
    assert spool.item_ids() == {2}
