"""An image's cutout: from the spool when an earlier attempt of its ledger row received it
from a remote engine but could not write the outputs, else from the engine. A remote
engine's result (Adobe's PNG, billed) is kept in the spool until every output is written
(see daemon.spool), so a result that was received is never paid for twice. The local
engine's cutouts are not spooled: computing one again costs only CPU, about what
encoding it for the spool would."""

from __future__ import annotations

import logging
import time
from typing import Protocol

from daemon.engines.base import Engine
from daemon.ledger_port import LedgerPort
from daemon.logs import context
from daemon.models import EncodedCutout, EngineJob, EngineResult, Item, SubmittedJob
from daemon.spool import ResultSpool
from daemon.storage.base import Storage

log = logging.getLogger(__name__)


class EngineObserver(Protocol):
    """What metrics want to know about engine calls (see daemon.metrics.Metrics)."""

    def engine_finished(self, engine: str, seconds: float) -> None: ...

    def job_submitted(self, engine: str) -> None: ...


class Results:
    """The pipeline's cut-out step, with the spool in front of the engine."""

    def __init__(
        self,
        storage: Storage,
        ledger: LedgerPort,
        observer: EngineObserver,
        spool: ResultSpool | None,
    ) -> None:
        self.storage = storage
        self.ledger = ledger
        self.observer = observer
        self.spool = spool

    def result_for(self, item: Item, engine: Engine) -> EngineResult:
        return self._spooled(item) or self._cut_out(item, engine)

    def forget(self, item: Item) -> None:
        """The row's outputs are written, or the row ended otherwise."""
        if self.spool is not None:
            self.spool.discard(item.id)

    def _spooled(self, item: Item) -> EncodedCutout | None:
        """A result an earlier attempt of this row received but could not write out: it
        is written from the spool; no job is resumed, nothing is submitted."""
        if self.spool is None or item.job_id is None:
            return None
        result = self.spool.load(item.id, item.job_id)
        if result is not None:
            log.info(
                "writing the spooled result of %s",
                item.path,
                extra=context("cutout.from_spool", path=item.path, rev=item.rev),
            )
            self.ledger.record_result_from_spool(item, len(result.data))
        return result

    def _cut_out(self, item: Item, engine: Engine) -> EngineResult:
        jobs = [item.job_id]  # the latest submission: the job whose result comes back
        started = time.monotonic()
        try:
            result = engine.cut_out(self._engine_job(item, engine.name, jobs))
        finally:
            self.observer.engine_finished(engine.name, time.monotonic() - started)
        if self.spool is not None and isinstance(result, EncodedCutout) and jobs[-1]:
            self.spool.save(item.id, jobs[-1], result)
        self.ledger.record_result_received(item, engine.name, time.monotonic() - started)
        return result

    def _engine_job(self, item: Item, engine: str, jobs: list[str | None]) -> EngineJob:
        """The job for `engine`; each submission is recorded, and appended to `jobs`."""
        file = item.as_file()
        submitted = (
            SubmittedJob(item.job_id, item.status_url) if item.job_id and item.status_url else None
        )

        def record_submission(job: SubmittedJob) -> None:
            self.ledger.record_submission(item, job, resubmitted=jobs[-1] is not None)
            jobs.append(job.job_id)
            self.observer.job_submitted(engine)
            log.info(
                "submitted %s as job %s",
                item.path,
                job.job_id,
                extra=context("cutout.submitted", path=item.path, rev=item.rev, job_id=job.job_id),
            )

        return EngineJob(
            item=item,
            read_bytes=lambda: self.storage.read(file),
            temporary_link=lambda: self.storage.temporary_link(file),
            record_submission=record_submission,
            submitted=submitted,
        )
