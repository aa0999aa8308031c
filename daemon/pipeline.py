"""Orchestration over the ports: discover -> claim -> cut out -> write -> archive -> ledger.

The pipeline decides; storage and engine adapters only translate.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC

from daemon.config import Settings
from daemon.delivery import OutputWriter
from daemon.engines.base import Engine
from daemon.errors import (
    AuthError,
    CursorResetError,
    ItemGoneError,
    LostClaimError,
    PermanentItemError,
    RateLimitedError,
    TransientError,
    UnreachableError,
)
from daemon.ledger_port import LedgerPort
from daemon.logs import context
from daemon.models import Item, ItemStatus, Profile
from daemon.observers import NullObserver as NullObserver
from daemon.observers import PipelineObserver as PipelineObserver
from daemon.profiles import choose_profile
from daemon.relocation import BATCH_LINGER, RELOCATE_FOR_POLICY, Relocator
from daemon.results import Results
from daemon.secrets import redact
from daemon.spool import ResultSpool
from daemon.storage.base import Storage

log = logging.getLogger(__name__)
# The service's trouble, not the item's: however long it lasts, the item keeps its last attempt
# (rate limits are waited out in place, then the claim is given back: see `_retry`).
SERVICE_WIDE = (UnreachableError,)


@dataclass(frozen=True, slots=True)
class Discovery:
    added: int = 0
    deleted: int = 0
    settling: int = 0


class Pipeline:
    def __init__(
        self,
        storage: Storage,
        engine: Engine,
        ledger: LedgerPort,
        settings: Settings,
        stop: threading.Event,
        observer: PipelineObserver | None = None,
        engines: Mapping[str, Engine] | None = None,
        spool: ResultSpool | None = None,
    ) -> None:
        """`engine` is `[engine] kind`'s; `engines` holds the others that profiles choose."""
        self.storage = storage
        self.engine = engine
        self.engines = {engine.name: engine, **(engines or {})}
        self.observer: PipelineObserver = observer or NullObserver()
        thumbnails = settings.http.enabled and settings.http.thumbnails > 0  # the status page
        self.writer = OutputWriter(
            storage,
            ledger,
            fold_case=settings.source.kind == "dropbox",
            previews=self.observer.output_written if thumbnails else None,
        )
        self.ledger = ledger
        self.settings = settings
        self.stop = stop
        self.results = Results(storage, ledger, self.observer, spool)
        linger = BATCH_LINGER if settings.source.kind == "dropbox" else 0.0  # a folder: no batches
        self.relocator = Relocator(storage, ledger, stop, linger)

    # -- discovery ------------------------------------------------------------------------

    def discover(self, progress: Callable[[], None] | None = None) -> Discovery:
        """Record every change since the stored cursor, page by page (rows + cursor in one
        transaction per page). A cursor reset lists everything again; known revisions
        are ignored by the ledger, so no duplicates arise. `progress` is called after each
        page (the service's watchdog: a first listing of a large folder takes long)."""
        cursor = self.ledger.get_cursor(self.storage.key)
        added = deleted = settling = 0
        resets = 0
        while not self.stop.is_set():
            try:
                batch = self.storage.list_changes(cursor)
            except CursorResetError as exc:
                resets += 1
                log.warning(
                    "%s; listing everything again",
                    exc,
                    extra=context("cursor.reset", storage=self.storage.key),
                )
                self.ledger.reset_cursor(self.storage.key)
                if resets > 3:
                    raise TransientError("cursor keeps resetting") from None
                cursor = None
                continue
            new, gone = self.ledger.record_changes(self.storage.key, batch, self.engine.name)
            added, deleted, settling = added + new, deleted + gone, settling + batch.settling
            cursor = batch.cursor
            if progress is not None:
                progress()
            if not batch.has_more:
                break
        if added or deleted:
            log.info(
                "discovered %d new revisions, %d deleted before processing",
                added,
                deleted,
                extra=context("discovery.changes", added=added, deleted=deleted),
            )
        return Discovery(added, deleted, settling)

    # -- one item -------------------------------------------------------------------------

    def process(self, item: Item) -> None:
        """Take a claimed revision to its next state. Never raises for one bad file;
        AuthError is the exception: the credentials are wrong for every file."""
        log.info(
            "processing %s",
            item.path,
            extra=context("item.claimed", path=item.path, rev=item.rev, attempt=item.attempts),
        )
        try:
            self._process(item)
        except LostClaimError:
            log.info(
                "lost the claim on %s", item.path, extra=context("item.lost_claim", path=item.path)
            )
        except ItemGoneError as exc:
            self._finish_skipped(item, str(exc), relocate=None)
        except PermanentItemError as exc:
            self._fail(item, str(exc))
        except AuthError:
            self._release(item, "credentials rejected")
            raise
        except TransientError as exc:
            self._retry(item, exc)
        except Exception as exc:  # a bug must not kill the daemon: retry, then fail
            log.exception(
                "unexpected error on %s", item.path, extra=context("item.error", path=item.path)
            )
            self._retry(item, TransientError(f"unexpected {type(exc).__name__}: {exc}"))

    def _process(self, item: Item) -> None:
        profile = choose_profile(self.settings, item.path)
        if self.settings.source.dedupe == "content" and self._skip_duplicate(item, profile):
            return
        engine = self.engine_for(profile)
        cutout = self.results.result_for(item, engine)
        self._require_current(item)
        outputs = self.writer.write_all(item, profile, cutout)
        self._succeed(item, outputs, engine.name, profile.name)

    def _succeed(self, item: Item, outputs: list[str], engine: str, profile: str) -> None:
        """Every output is written and recorded: the revision succeeds, then its input moves."""
        relocate = RELOCATE_FOR_POLICY[self.settings.archive.policy]
        self.ledger.succeed(item, outputs, engine, profile, relocate)
        log.info(
            "wrote output/%s",
            ", output/".join(outputs),
            extra=context("cutout.succeeded", path=item.path, rev=item.rev, output=outputs[0]),
        )
        self.results.forget(item)
        self._observe_finished(item, "succeeded")
        self.relocate(item, relocate)

    def engine_for(self, profile: Profile) -> Engine:
        return self.engines[profile.engine or self.settings.engine.kind]

    def _require_current(self, item: Item) -> None:
        """Write an output only while the input is still this revision: a result for a
        replaced revision would overwrite the newer one's output (another worker may have
        finished it meanwhile), and a deleted input wants none."""
        current = self.storage.current_rev(item.path)
        if current is None:
            raise ItemGoneError(
                "gone from input/ while processing (deleted, or replaced and the new "
                "revision archived); no output written"
            )
        if current != item.rev:
            raise ItemGoneError(
                f"replaced while processing (now rev {current}); no output written, "
                "the new revision is processed on its own"
            )

    def _skip_duplicate(self, item: Item, profile: Profile) -> bool:
        """Same bytes as a revision that already succeeded: reuse its outputs, no engine call."""
        original = self.ledger.find_succeeded_duplicate(item.content_hash, item.id)
        if original is None or original.output_path is None:
            return False
        if self.storage.current_rev(item.path) != item.rev:
            raise ItemGoneError("deleted or replaced before processing")
        outputs = self.writer.reuse(item, profile, original)
        if outputs is None:
            return False
        reason = f"duplicate of {original.path} (rev {original.rev}); output reused"
        self._finish_skipped(
            item,
            reason,
            relocate=RELOCATE_FOR_POLICY[self.settings.archive.policy],
            output=outputs[0],
        )
        return True

    # -- outcomes -------------------------------------------------------------------------

    def _finish_skipped(
        self, item: Item, reason: str, relocate: str | None, output: str | None = None
    ) -> None:
        self._finish(item, ItemStatus.SKIPPED, reason, relocate, output)

    def _fail(self, item: Item, reason: str) -> None:
        self._finish(item, ItemStatus.FAILED, reason, "failed")

    def _finish(
        self,
        item: Item,
        status: ItemStatus,
        reason: str,
        relocate: str | None,
        output: str | None = None,
    ) -> None:
        """End a revision as skipped or failed, with the reason in the ledger, then move
        its input (failed/ for failures). Vendors' messages may quote signed URLs: the
        reason is redacted before it is stored."""
        reason = redact(reason)
        try:
            if status == ItemStatus.FAILED:
                self.ledger.fail(item, reason, relocate)
            else:
                self.ledger.skip(item, reason, relocate, output)
        except LostClaimError:
            return
        self.results.forget(item)
        level = logging.ERROR if status == ItemStatus.FAILED else logging.INFO
        log.log(
            level,
            "%s %s: %s",
            status.value,
            item.path,
            reason,
            extra=context(f"item.{status.value}", path=item.path, rev=item.rev, reason=reason),
        )
        self._observe_finished(item, status.value)
        if status == ItemStatus.FAILED:
            self.observer.item_failed(item, reason)
        self.relocate(item, relocate)

    def _retry(self, item: Item, error: TransientError) -> None:
        if self.stop.is_set():
            self._release(item, f"stopping: {error}")
            return
        if isinstance(error, RateLimitedError):  # waited out in place already: give it back
            delay = error.retry_after or self.settings.retry.backoff_initial
            self._release(item, f"rate-limited: {error}", delay=delay)
            self.observer.retry_scheduled(True)
            return
        service_wide = isinstance(error, SERVICE_WIDE)
        if item.attempts >= self.settings.retry.max_attempts and not service_wide:
            self._fail(item, f"gave up after {item.attempts} attempts: {error}")
            return
        delay = self.settings.retry.delay_after(item.attempts)
        if isinstance(error, RateLimitedError) and error.retry_after is not None:
            delay = max(delay, error.retry_after)
        message = redact(str(error))
        try:
            self.ledger.schedule_retry(
                item,
                error=message,
                delay=delay,
                forget_job=getattr(error, "forget_job", False),
                max_attempts=self.settings.retry.max_attempts if service_wide else None,
            )
        except LostClaimError:
            return
        log.warning(
            "will retry %s in %.0f s: %s",
            item.path,
            delay,
            error,
            extra=context("item.retry", path=item.path, rev=item.rev, attempt=item.attempts),
        )
        self.observer.retry_scheduled(isinstance(error, RateLimitedError))

    def _observe_finished(self, item: Item, outcome: str) -> None:
        discovered = item.discovered_at
        if discovered.tzinfo is None:  # SQLite hands back naive UTC
            discovered = discovered.replace(tzinfo=UTC)
        self.observer.item_finished(outcome, (self.ledger.clock() - discovered).total_seconds())

    def _release(self, item: Item, reason: str, delay: float | None = None) -> None:
        """Give a claimed revision back untouched (stop, drain, a rate limit that outlasted
        the wait in place): the attempt does not count. `delay`: not before that many s."""
        reason = redact(reason)
        try:
            self.ledger.release(item, reason, delay)
        except LostClaimError:
            return
        log.info(
            "released %s: %s", item.path, reason, extra=context("item.released", path=item.path)
        )

    def release(self, item: Item, reason: str) -> None:
        self._release(item, reason)

    # -- moving inputs (see daemon.relocation) --------------------------------------------

    def relocate(self, item: Item, target: str | None) -> None:
        self.relocator.relocate(item, target)

    def relocate_pending(self, wait: bool = True) -> None:
        self.relocator.relocate_pending(wait)
