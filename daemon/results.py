"""An image's result: from the spool when an earlier attempt of its ledger row received it
but could not write it out, else from the engine, and then kept in the spool until the
output is written (see daemon.spool). A result that was received is never paid for twice."""

from __future__ import annotations

import logging
import time
from typing import Protocol

from daemon.engines.base import Engine
from daemon.ledger import Ledger
from daemon.logs import context
from daemon.models import CutoutOptions, CutoutResult, EngineJob, Item, SubmittedJob
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
        engine: Engine,
        storage: Storage,
        ledger: Ledger,
        options: CutoutOptions,
        observer: EngineObserver,
        spool: ResultSpool | None,
    ) -> None:
        self.engine = engine
        self.storage = storage
        self.ledger = ledger
        self.options = options
        self.observer = observer
        self.spool = spool

    def result_for(self, item: Item) -> CutoutResult:
        return self._spooled(item) or self._cut_out(item)

    def forget(self, item: Item) -> None:
        """The row's output is written, or the row ended otherwise."""
        if self.spool is not None:
            self.spool.discard(item.id)

    def _spooled(self, item: Item) -> CutoutResult | None:
        """A result an earlier attempt of this row received but could not write out: it
        is written from the spool, never paid for again (see daemon.spool)."""
        if self.spool is None:
            return None
        result = self.spool.load(item.id, item.job_id or self.engine.name)
        if result is not None:
            log.info(
                "writing the spooled result of %s",
                item.path,
                extra=context("cutout.from_spool", path=item.path, rev=item.rev),
            )
            self.ledger.record_event(item.id, "result_from_spool", bytes=len(result.data))
        return result

    def _cut_out(self, item: Item) -> CutoutResult:
        file = item.as_file()
        submitted = (
            SubmittedJob(item.job_id, item.status_url) if item.job_id and item.status_url else None
        )
        jobs = [item.job_id]  # the latest submission: the job whose result comes back

        def record_submission(job: SubmittedJob) -> None:
            self.ledger.record_submission(item.id, job, resubmitted=jobs[-1] is not None)
            jobs.append(job.job_id)
            self.observer.job_submitted(self.engine.name)
            log.info(
                "submitted %s as job %s",
                item.path,
                job.job_id,
                extra=context("cutout.submitted", path=item.path, rev=item.rev, job_id=job.job_id),
            )

        job = EngineJob(
            item=item,
            options=self.options,
            read_bytes=lambda: self.storage.read(file),
            temporary_link=lambda: self.storage.temporary_link(file),
            record_submission=record_submission,
            submitted=submitted,
        )
        started = time.monotonic()
        try:
            result = self.engine.cut_out(job)
        finally:
            self.observer.engine_finished(self.engine.name, time.monotonic() - started)
        if self.spool is not None:
            self.spool.save(item.id, jobs[-1] or self.engine.name, result)
        self.ledger.record_event(
            item.id,
            "result_received",
            engine=self.engine.name,
            seconds=round(time.monotonic() - started, 3),
            bytes=len(result.data),
        )
        return result
