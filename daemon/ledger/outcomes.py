"""The ledger's transitions of one revision: every write about a claimed revision, named
for its intent (succeed, skip, fail, schedule_retry, release, ...), each a compare-and-set
(`UPDATE ... WHERE id=:id AND status=:expected`) that appends its event row in the same
transaction; a rowcount other than 1 raises LostClaimError. The column values are built
here, never by the core (see daemon.ledger_port)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import Connection, insert, select, update

from daemon.errors import LostClaimError
from daemon.ledger.outputs import OutputLedger
from daemon.ledger.queries import to_item
from daemon.ledger.schema import EventRow, ItemRow
from daemon.models import Item, ItemStatus, SubmittedJob

RELEASED: dict[str, Any] = {"claimed_by": None, "lease_expires_at": None}  # no claim holds it


class Outcomes(OutputLedger):
    """Events and transitions; `daemon.ledger.Ledger` adds discovery and claims."""

    # -- events ---------------------------------------------------------------------------

    def _event(
        self,
        connection: Connection,
        item_id: int,
        event: str,
        *,
        from_status: str | None = None,
        to_status: str | None = None,
        actor: str | None = None,
        **detail: Any,
    ) -> None:
        connection.execute(
            insert(EventRow).values(
                item_id=item_id,
                at=self.clock(),
                event=event,
                from_status=from_status,
                to_status=to_status,
                actor=actor or self.node_id,
                detail=json.dumps(detail, sort_keys=True, default=str) if detail else None,
            )
        )

    def record_event(
        self, item_id: int, event: str, actor: str | None = None, **detail: Any
    ) -> None:
        with self.transaction() as connection:
            self._event(connection, item_id, event, actor=actor, **detail)

    # -- transitions ----------------------------------------------------------------------

    def _transition(
        self,
        connection: Connection,
        item_id: int,
        expected: ItemStatus,
        target: ItemStatus,
        event: str,
        values: Mapping[str, Any],
        actor: str | None = None,
        **detail: Any,
    ) -> None:
        result = connection.execute(
            update(ItemRow)
            .where(ItemRow.id == item_id, ItemRow.status == expected)
            .values(status=target, **values)
        )
        if result.rowcount != 1:
            raise LostClaimError(f"item {item_id} is no longer {expected}")
        self._event(
            connection,
            item_id,
            event,
            from_status=expected,
            to_status=target,
            actor=actor,
            **detail,
        )

    def transition(
        self,
        item_id: int,
        expected: ItemStatus,
        target: ItemStatus,
        event: str,
        values: Mapping[str, Any] | None = None,
        actor: str | None = None,
        **detail: Any,
    ) -> Item:
        with self.transaction() as connection:
            self._transition(
                connection, item_id, expected, target, event, values or {}, actor=actor, **detail
            )
            return to_item(connection.execute(select(ItemRow).where(ItemRow.id == item_id)).one())

    def record_submission(self, item: Item, job: SubmittedJob, resubmitted: bool) -> None:
        """Store the remote job before the first poll, so a restart resumes it."""
        with self.transaction() as connection:
            result = connection.execute(
                update(ItemRow)
                .where(ItemRow.id == item.id, ItemRow.status == ItemStatus.PROCESSING)
                .values(
                    job_id=job.job_id,
                    status_url=job.status_url,
                    lease_expires_at=self.clock() + self.lease,
                )
            )
            if result.rowcount != 1:
                raise LostClaimError(f"item {item.id} is no longer processing")
            self._event(
                connection,
                item.id,
                "resubmitted" if resubmitted else "submitted",
                job_id=job.job_id,
            )

    def record_result_received(self, item: Item, engine: str, seconds: float) -> None:
        self.record_event(item.id, "result_received", engine=engine, seconds=round(seconds, 3))

    def record_result_from_spool(self, item: Item, size: int) -> None:
        self.record_event(item.id, "result_from_spool", bytes=size)

    # -- outcomes of a claimed revision ---------------------------------------------------

    def succeed(
        self, item: Item, outputs: Sequence[str], engine: str, profile: str, relocate: str | None
    ) -> None:
        values = {
            "output_path": outputs[0],
            "engine": engine,
            "finished_at": self.clock(),
            "last_error": None,
            "relocate_to": relocate,
            **RELEASED,
        }
        self.transition(
            item.id,
            ItemStatus.PROCESSING,
            ItemStatus.SUCCEEDED,
            "succeeded",
            values,
            output=outputs[0] if len(outputs) == 1 else list(outputs),
            profile=profile,
        )

    def skip(
        self, item: Item, reason: str, relocate: str | None, output: str | None = None
    ) -> None:
        self._finish(item, ItemStatus.SKIPPED, reason, relocate, output)

    def fail(self, item: Item, reason: str, relocate: str | None) -> None:
        self._finish(item, ItemStatus.FAILED, reason, relocate)

    def _finish(
        self,
        item: Item,
        status: ItemStatus,
        reason: str,
        relocate: str | None,
        output: str | None = None,
    ) -> None:
        values: dict[str, Any] = {
            "last_error": reason,
            "finished_at": self.clock(),
            "relocate_to": relocate,
            **RELEASED,
        }
        if output:
            values["output_path"] = output
        self.transition(item.id, ItemStatus.PROCESSING, status, status.value, values, reason=reason)

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
            **RELEASED,
        }
        if forget_job:
            values.update(job_id=None, status_url=None)
        if max_attempts is not None:  # keep one attempt for when the service is back
            values["attempts"] = min(item.attempts, max_attempts - 1)
        self.transition(
            item.id,
            ItemStatus.PROCESSING,
            ItemStatus.PENDING,
            "retry_scheduled",
            values,
            error=error,
            delay=round(delay, 1),
        )

    def release(self, item: Item, reason: str, delay: float | None = None) -> None:
        values: dict[str, Any] = {"attempts": max(item.attempts - 1, 0), **RELEASED}
        if delay is not None:
            values["next_attempt_at"] = self.clock() + timedelta(seconds=delay)
        self.transition(
            item.id, ItemStatus.PROCESSING, ItemStatus.PENDING, "released", values, reason=reason
        )

    # -- moving inputs --------------------------------------------------------------------

    def mark_relocated(self, item: Item, archived_path: str | None, event: str) -> None:
        with self.transaction() as connection:
            connection.execute(
                update(ItemRow)
                .where(ItemRow.id == item.id)
                .values(relocate_to=None, archived_path=archived_path, archived_at=self.clock())
            )
            self._event(connection, item.id, event, path=archived_path)

    def clear_relocation(self, item: Item, reason: str) -> None:
        with self.transaction() as connection:
            connection.execute(
                update(ItemRow).where(ItemRow.id == item.id).values(relocate_to=None)
            )
            self._event(connection, item.id, "relocation.abandoned", reason=reason)
