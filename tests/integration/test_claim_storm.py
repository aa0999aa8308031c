"""The claim storm: 4 real processes x 8 worker threads over 2,000 rows on PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.storm import fill, storm


@pytest.mark.slow
@pytest.mark.parametrize("ledger_url", ["postgresql"], indirect=True)
def test_every_row_is_claimed_exactly_once_and_no_claimer_comes_back_empty_while_rows_are_due(
    ledger_url: str, tmp_path: Path
) -> None:
    fill(ledger_url, 2000)
    result = storm(ledger_url, processes=4, threads=8, workdir=tmp_path)
    assert len(result.claimed) == 2000
    assert len(set(result.claimed)) == 2000
    assert result.empty_while_due == 0
