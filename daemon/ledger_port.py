"""The ledger as the core sees it: intent-named operations, no columns, no SQL.

`daemon.ledger.Ledger` implements this port over SQLAlchemy (SQLite or PostgreSQL);
`tests/fakes/memory_ledger.py` implements it in memory for fast core tests, and
`tests/integration/test_ledger_contract.py` runs the same checks against all of them.

Every write about a claimed revision takes the claimed `Item` itself (not its id), so an
implementation can fence it on `item.claim_token`. A write whose claim is no longer
current (the row moved on, or another worker holds it now) raises
`daemon.errors.LostClaimError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from daemon.models import ChangeBatch, Item, ItemStatus, OutputRecord, SubmittedJob


class LedgerPort(Protocol):
    """Durable state of every input revision, as the pipeline and the service use it."""

    # -- housekeeping ---------------------------------------------------------------------

    def clock(self) -> datetime:
        """The ledger's time (aware UTC)."""
        ...

    def describe(self) -> str:
        """Where the ledger lives, without credentials."""
        ...

    def migrate(self) -> bool:
        """Bring the schema up to date; True when it changed."""
        ...

    def close(self) -> None: ...

    # -- discovery ------------------------------------------------------------------------

    def get_cursor(self, storage_key: str) -> str | None: ...

    def reset_cursor(self, storage_key: str) -> None:
        """Forget the cursor: the next listing starts from scratch."""
        ...

    def record_changes(self, storage_key: str, batch: ChangeBatch, engine: str) -> tuple[int, int]:
        """Record a page of changes and its cursor at once; (new revisions, pending
        revisions skipped because their file was deleted). Known revisions are ignored."""
        ...

    # -- claims ---------------------------------------------------------------------------

    def claim_next(self) -> Item | None:
        """Take the oldest due pending revision (attempts + 1); None when none is due."""
        ...

    def recover_expired(self) -> list[Item]:
        """Put back revisions left processing by a crash or stop (job ids are kept)."""
        ...

    # -- one claimed revision -------------------------------------------------------------

    def record_submission(self, item: Item, job: SubmittedJob, resubmitted: bool) -> None:
        """Store a remote job before its first poll, so a restart resumes it."""
        ...

    def record_result_received(self, item: Item, engine: str, seconds: float) -> None: ...

    def record_result_from_spool(self, item: Item, size: int) -> None: ...

    def reserve_output(
        self,
        item: Item,
        slot: int,
        spec: str,
        candidates: Sequence[str],
        *,
        fold_case: bool = True,
    ) -> str:
        """The first of `candidates` no other input owns, now owned by output `slot`."""
        ...

    def record_output_written(self, item: Item, slot: int, size: int) -> None:
        """The file of output `slot` is whole in output/."""
        ...

    def succeed(
        self, item: Item, outputs: Sequence[str], engine: str, profile: str, relocate: str | None
    ) -> None:
        """Every output is written: the revision succeeded; its input moves to `relocate`."""
        ...

    def skip(
        self, item: Item, reason: str, relocate: str | None, output: str | None = None
    ) -> None:
        """The revision ends without an engine result (gone, replaced, a duplicate)."""
        ...

    def fail(self, item: Item, reason: str, relocate: str | None) -> None:
        """The revision failed for good; its input moves to `relocate` (failed/)."""
        ...

    def schedule_retry(
        self,
        item: Item,
        *,
        error: str,
        delay: float,
        forget_job: bool = False,
        max_attempts: int | None = None,
    ) -> None:
        """Back to pending, due in `delay` s. `forget_job`: the stored remote job is
        useless, submit anew. `max_attempts`: the service's trouble, not the image's: the
        attempt count stays below it, so one attempt is kept for when the service is back."""
        ...

    def release(self, item: Item, reason: str, delay: float | None = None) -> None:
        """Give the claim back untouched (the attempt does not count); `delay`: not due
        before that many seconds."""
        ...

    # -- moving inputs --------------------------------------------------------------------

    def pending_relocations(self) -> list[tuple[Item, str]]:
        """Finished revisions whose input still has to move, with the target."""
        ...

    def mark_relocated(self, item: Item, archived_path: str | None, event: str) -> None: ...

    def clear_relocation(self, item: Item, reason: str) -> None:
        """The input stays where it is (changed or gone); the move is abandoned."""
        ...

    # -- reading --------------------------------------------------------------------------

    def get(self, item_id: int) -> Item | None: ...

    def find_succeeded_duplicate(self, content_hash: str, exclude_id: int) -> Item | None: ...

    def outputs_of(self, item_id: int) -> list[OutputRecord]: ...

    def counts(self) -> dict[ItemStatus, int]: ...

    def next_due_at(self) -> datetime | None:
        """When the earliest pending revision becomes due (None if none is pending)."""
        ...

    def finished_since(self, since: datetime) -> dict[ItemStatus, int]: ...
