"""An in-memory implementation of `daemon.ledger_port.LedgerPort`, for fast core tests
(as procrastinate's InMemoryConnector serves its JobManager). It keeps the promises the
SQL ledger keeps, checked by tests/integration/test_ledger_contract.py against SQLite and
PostgreSQL alike, so it cannot drift: compare-and-set transitions that raise
LostClaimError, one row per (path_lower, rev), output names owned by one input."""

from __future__ import annotations

import dataclasses
import os
import socket
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from daemon.errors import LostClaimError, PermanentItemError
from daemon.models import (
    ChangeBatch,
    DeletedEntry,
    Item,
    ItemStatus,
    OutputRecord,
    RemoteFile,
    SubmittedJob,
)

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclasses.dataclass(slots=True)
class _Claim:
    node_id: str | None = None
    lease_expires_at: datetime | None = None
    relocate_to: str | None = None


@dataclasses.dataclass(slots=True)
class _Output:
    record: OutputRecord
    key: str  # the name as owned: folded to lower case where the storage ignores case


class MemoryLedger:
    """Every revision, output and cursor in dictionaries, behind one lock."""

    def __init__(
        self, *, clock: Clock = utcnow, node_id: str | None = None, lease_seconds: float = 600.0
    ) -> None:
        self.clock = clock
        self.node_id = node_id or f"{socket.gethostname()}:{os.getpid()}"
        self.lease = timedelta(seconds=lease_seconds)
        self.items: dict[int, Item] = {}
        self.events: list[tuple[int, str]] = []
        self._claims: dict[int, _Claim] = {}
        self._cursors: dict[str, str] = {}
        self._outputs: dict[tuple[int, int], _Output] = {}
        self._lock = threading.RLock()

    # -- housekeeping ---------------------------------------------------------------------

    def describe(self) -> str:
        return "memory"

    def migrate(self) -> bool:
        return False

    def close(self) -> None:
        pass

    # -- discovery ------------------------------------------------------------------------

    def get_cursor(self, storage_key: str) -> str | None:
        with self._lock:
            return self._cursors.get(storage_key)

    def reset_cursor(self, storage_key: str) -> None:
        with self._lock:
            self._cursors.pop(storage_key, None)

    def record_changes(self, storage_key: str, batch: ChangeBatch, engine: str) -> tuple[int, int]:
        added = deleted = 0
        with self._lock:
            for change in batch.changes:
                if isinstance(change, DeletedEntry):
                    deleted += self._skip_deleted(change.path_lower)
                elif self._insert(change, engine):
                    added += 1
            self._cursors[storage_key] = batch.cursor
        return added, deleted

    def _insert(self, file: RemoteFile, engine: str) -> bool:
        known = {(i.path_lower, i.rev) for i in self.items.values()}
        if (file.path_lower, file.rev) in known:
            return False
        item_id = len(self.items) + 1
        self.items[item_id] = Item(
            id=item_id,
            path=file.path,
            path_lower=file.path_lower,
            rev=file.rev,
            content_hash=file.content_hash,
            size=file.size,
            status=ItemStatus.PENDING,
            attempts=0,
            next_attempt_at=None,
            last_error=None,
            engine=engine,
            job_id=None,
            status_url=None,
            output_path=None,
            discovered_at=self.clock(),
            started_at=None,
            finished_at=None,
            archived_at=None,
            archived_path=None,
        )
        self._claims[item_id] = _Claim()
        self.events.append((item_id, "discovered"))
        return True

    def _skip_deleted(self, path_lower: str) -> int:
        gone = [
            i
            for i in self.items.values()
            if i.status == ItemStatus.PENDING
            and (i.path_lower == path_lower or i.path_lower.startswith(path_lower + "/"))
        ]
        for item in gone:
            reason = "deleted before processing"
            self._transition(
                item, ItemStatus.PENDING, ItemStatus.SKIPPED, "skipped",
                last_error=reason, finished_at=self.clock(),
            )  # fmt: skip
        return len(gone)

    # -- claims ---------------------------------------------------------------------------

    def claim_next(self) -> Item | None:
        now = self.clock()
        with self._lock:
            for item in sorted(self.items.values(), key=lambda i: i.id):
                due = item.next_attempt_at is None or item.next_attempt_at <= now
                if item.status != ItemStatus.PENDING or not due:
                    continue
                claimed = self._transition(
                    item, ItemStatus.PENDING, ItemStatus.PROCESSING, "claimed",
                    attempts=item.attempts + 1, started_at=now, next_attempt_at=None,
                )  # fmt: skip
                self._claims[item.id].node_id = self.node_id
                self._claims[item.id].lease_expires_at = now + self.lease
                return claimed
        return None

    def recover_expired(self) -> list[Item]:
        now = self.clock()
        host = self.node_id.split(":", 1)[0]
        recovered = []
        with self._lock:
            for item in list(self.items.values()):
                claim = self._claims[item.id]
                expired = claim.lease_expires_at is not None and claim.lease_expires_at < now
                ours = claim.node_id is None or claim.node_id.startswith(f"{host}:")
                if item.status == ItemStatus.PROCESSING and (ours or expired):
                    recovered.append(item)
                    self._transition(item, ItemStatus.PROCESSING, ItemStatus.PENDING, "recovered")
        return recovered

    # -- one claimed revision -------------------------------------------------------------

    def _transition(
        self, item: Item, expected: ItemStatus, target: ItemStatus, event: str, **values: Any
    ) -> Item:
        """Compare-and-set on the status, as the SQL ledger's UPDATE ... WHERE status."""
        with self._lock:
            current = self.items.get(item.id)
            if current is None or current.status != expected:
                raise LostClaimError(f"item {item.id} is no longer {expected}")
            relocate = values.pop("relocate_to", self._claims[item.id].relocate_to)
            changed = dataclasses.replace(current, status=target, **values)
            self.items[item.id] = changed
            if target != ItemStatus.PROCESSING:
                self._claims[item.id] = _Claim(relocate_to=relocate)
            self.events.append((item.id, event))
            return changed

    def record_submission(self, item: Item, job: SubmittedJob, resubmitted: bool) -> None:
        with self._lock:
            self._transition(
                item, ItemStatus.PROCESSING, ItemStatus.PROCESSING,
                "resubmitted" if resubmitted else "submitted",
                job_id=job.job_id, status_url=job.status_url,
            )  # fmt: skip
            self._claims[item.id].lease_expires_at = self.clock() + self.lease

    def record_result_received(self, item: Item, engine: str, seconds: float) -> None:
        self.events.append((item.id, "result_received"))

    def record_result_from_spool(self, item: Item, size: int) -> None:
        self.events.append((item.id, "result_from_spool"))

    def reserve_output(
        self,
        item: Item,
        slot: int,
        spec: str,
        candidates: Sequence[str],
        *,
        fold_case: bool = True,
    ) -> str:
        with self._lock:
            for candidate in candidates:
                key = candidate.lower() if fold_case else candidate
                if any(
                    o.key == key and self.items[owner].path_lower != item.path_lower
                    for (owner, _), o in self._outputs.items()
                ):
                    continue
                record = OutputRecord(slot, candidate, spec, None, None)
                self._outputs[(item.id, slot)] = _Output(record, key)
                return candidate
        raise PermanentItemError(f"every output name is taken: {', '.join(candidates)}")

    def record_output_written(self, item: Item, slot: int, size: int) -> None:
        with self._lock:
            output = self._outputs.get((item.id, slot))
            if output is None:
                raise LostClaimError(f"output {slot} of item {item.id} is not reserved")
            output.record = dataclasses.replace(output.record, bytes=size, written_at=self.clock())

    def succeed(
        self, item: Item, outputs: Sequence[str], engine: str, profile: str, relocate: str | None
    ) -> None:
        self._transition(
            item, ItemStatus.PROCESSING, ItemStatus.SUCCEEDED, "succeeded",
            output_path=outputs[0], engine=engine, finished_at=self.clock(),
            last_error=None, relocate_to=relocate,
        )  # fmt: skip

    def skip(
        self, item: Item, reason: str, relocate: str | None, output: str | None = None
    ) -> None:
        extra = {"output_path": output} if output else {}
        self._transition(
            item, ItemStatus.PROCESSING, ItemStatus.SKIPPED, "skipped",
            last_error=reason, finished_at=self.clock(), relocate_to=relocate, **extra,
        )  # fmt: skip

    def fail(self, item: Item, reason: str, relocate: str | None) -> None:
        self._transition(
            item, ItemStatus.PROCESSING, ItemStatus.FAILED, "failed",
            last_error=reason, finished_at=self.clock(), relocate_to=relocate,
        )  # fmt: skip

    def schedule_retry(
        self,
        item: Item,
        *,
        error: str,
        delay: float,
        forget_job: bool = False,
        max_attempts: int | None = None,
    ) -> None:
        values: dict[str, Any] = {
            "last_error": error,
            "next_attempt_at": self.clock() + timedelta(seconds=delay),
        }
        if forget_job:
            values.update(job_id=None, status_url=None)
        if max_attempts is not None:
            values["attempts"] = min(item.attempts, max_attempts - 1)
        self._transition(
            item, ItemStatus.PROCESSING, ItemStatus.PENDING, "retry_scheduled", **values
        )

    def release(self, item: Item, reason: str, delay: float | None = None) -> None:
        values: dict[str, Any] = {"attempts": max(item.attempts - 1, 0)}
        if delay is not None:
            values["next_attempt_at"] = self.clock() + timedelta(seconds=delay)
        self._transition(item, ItemStatus.PROCESSING, ItemStatus.PENDING, "released", **values)

    # -- moving inputs --------------------------------------------------------------------

    def pending_relocations(self) -> list[tuple[Item, str]]:
        with self._lock:
            return [
                (self.items[item_id], claim.relocate_to)
                for item_id, claim in sorted(self._claims.items())
                if claim.relocate_to is not None
            ]

    def mark_relocated(self, item: Item, archived_path: str | None, event: str) -> None:
        with self._lock:
            self._claims[item.id].relocate_to = None
            self.items[item.id] = dataclasses.replace(
                self.items[item.id], archived_path=archived_path, archived_at=self.clock()
            )
            self.events.append((item.id, event))

    def clear_relocation(self, item: Item, reason: str) -> None:
        with self._lock:
            self._claims[item.id].relocate_to = None
            self.events.append((item.id, "relocation.abandoned"))

    # -- reading --------------------------------------------------------------------------

    def get(self, item_id: int) -> Item | None:
        with self._lock:
            return self.items.get(item_id)

    def find_succeeded_duplicate(self, content_hash: str, exclude_id: int) -> Item | None:
        with self._lock:
            found = [
                i
                for i in self.items.values()
                if i.content_hash == content_hash
                and i.status == ItemStatus.SUCCEEDED
                and i.id != exclude_id
                and i.output_path is not None
            ]
        return max(found, key=lambda i: i.id) if found else None

    def outputs_of(self, item_id: int) -> list[OutputRecord]:
        with self._lock:
            found = [o.record for (owner, _), o in self._outputs.items() if owner == item_id]
        return sorted(found, key=lambda r: r.slot)

    def counts(self) -> dict[ItemStatus, int]:
        with self._lock:
            statuses = [i.status for i in self.items.values()]
        return {status: statuses.count(status) for status in ItemStatus}

    def next_due_at(self) -> datetime | None:
        with self._lock:
            pending = [i for i in self.items.values() if i.status == ItemStatus.PENDING]
        if not pending:
            return None
        if any(i.next_attempt_at is None for i in pending):
            return self.clock()
        return min(i.next_attempt_at for i in pending if i.next_attempt_at is not None)

    def finished_since(self, since: datetime) -> dict[ItemStatus, int]:
        found: dict[ItemStatus, int] = {}
        with self._lock:
            for item in self.items.values():
                if item.finished_at is not None and item.finished_at >= since:
                    found[item.status] = found.get(item.status, 0) + 1
        return found
