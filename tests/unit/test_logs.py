from __future__ import annotations

import json
import logging

import pytest

from daemon.logs import configure_logging, context
from daemon.secrets import register_secret


def test_json_lines_carry_event_and_context(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    configure_logging("INFO", "json")
    logging.getLogger("daemon.test").info(
        "wrote %s", "a.png", extra=context("cutout.succeeded", path="a.jpg")
    )
    record = json.loads(capsys.readouterr().err)
    assert (record["event"], record["path"], record["message"], record["level"]) == (
        "cutout.succeeded", "a.jpg", "wrote a.png", "INFO")  # fmt: skip


def test_secrets_and_url_queries_are_scrubbed(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    register_secret("sl.supersecrettoken")
    configure_logging("DEBUG", "text")
    logging.getLogger("daemon.test").debug(
        "token %s link %s", "sl.supersecrettoken", "https://dl.example.com/x.jpg?sig=abc123",
        extra=context("test.event", url="https://h/p?token=zzz"))  # fmt: skip
    err = capsys.readouterr().err
    assert "supersecrettoken" not in err and "abc123" not in err and "zzz" not in err
    assert "https://dl.example.com/x.jpg?<redacted>" in err


def test_journald_priority_prefix(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", "8:1234")
    configure_logging("INFO", "json")
    logging.getLogger("daemon.test").error("boom", extra=context("item.failed"))
    line = capsys.readouterr().err
    assert line.startswith("<3>{")
    assert json.loads(line[3:])["event"] == "item.failed"


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_tracebacks_are_scrubbed(
    fmt: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    register_secret("ims-token-in-a-traceback")
    configure_logging("INFO", fmt)
    try:
        raise RuntimeError(
            "GET https://results.example.com/out.png?X-Amz-Signature=deadbeef failed "
            "with Authorization: Bearer ims-token-in-a-traceback"
        )
    except RuntimeError:
        logging.getLogger("daemon.test").exception("download failed")
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "RuntimeError" in err
    assert "deadbeef" not in err and "ims-token-in-a-traceback" not in err
    assert "out.png?<redacted>" in err
    if fmt == "json":
        assert "RuntimeError" in json.loads(err)["exc_info"]


@pytest.mark.parametrize(
    "token",
    [
        "Kq3vZ8xYw2LmN4pRt6sUa9bC",  # letters and digits
        "KqvZxYwLmNpRtsUabCdEfGhJkLmNoPqR",  # a long token that happens to hold no digit
        "abcdefghijklmnopqrstuvwxyz_-ABCDEF",
    ],
)
def test_an_opaque_token_in_a_link_path_is_redacted(token: str) -> None:
    """A temporary link carries its secret in its path. Random tokens sometimes hold no
    digit (about 1 in 230 for 32 characters): length alone must be enough to redact."""
    from daemon.secrets import redact

    text = redact(f"could not fetch https://dl.example.com/tl/{token}/shoe.jpg (403)")
    assert token not in text
    assert "https://dl.example.com/tl/<redacted>/shoe.jpg" in text


def test_an_ordinary_path_stays_readable() -> None:
    from daemon.secrets import redact

    text = redact("wrote https://dl.example.com/output/summer/red-shoe_front.png")
    assert "output/summer/red-shoe_front.png" in text


def test_the_scheduler_tells_only_of_errors(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """APScheduler's line per discovery run, and its warnings of coalesced or skipped runs
    (on purpose here), stay out of the log even at DEBUG; a failing job still shows."""
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    configure_logging("DEBUG", "text")
    executor = logging.getLogger("apscheduler.executors.default")
    executor.info('Running job "discovery pass"')
    logging.getLogger("apscheduler.scheduler").warning("Execution of job skipped")
    executor.error('Job "discovery pass" raised an exception')
    err = capsys.readouterr().err
    assert "Running job" not in err and "skipped" not in err
    assert "raised an exception" in err
