"""The ledger's transitions of one revision: every write about a claimed revision, named
for its intent (succeed, skip, fail, schedule_retry, release, ...), each a compare-and-set
(`UPDATE ... WHERE id=:id AND status=:expected AND claim_token=:token`) that appends its
event row in the same transaction; a rowcount other than 1 raises LostClaimError, and a
node whose claim was taken over changes nothing. The archive move has its own claim and
token (see daemon.ledger.claims). The column values are built here, never by the core
(see daemon.ledger_port)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import ColumnElement, Connection, insert, select, update

from daemon.errors import LostClaimError
from daemon.ledger.claims import claim_fence, database_now, later, move_fence
from daemon.ledger.outputs import OutputLedger, require_claim
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
        self, item: Item | int, event: str, actor: str | None = None, **detail: Any
    ) -> None:
        """Append an event. About a claimed Item: only while the claim is current
        (LostClaimError otherwise), so a node that lost it leaves no trace."""
        item_id, fence = claim_fence(item)
        with self.transaction() as connection:
            if fence:
                require_claim(connection, item_id, fence)
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
        fence: Sequence[ColumnElement[bool]] = (),
        **detail: Any,
    ) -> None:
        """`fence`: the claim token check of a claimed Item (see claims.claim_fence). A row
        leaving `processing` drops its claim token; one that must move next gets the move
        claim, fenced by the token of the claim that finished it."""
        values = dict(values)
        if expected == ItemStatus.PROCESSING and target != ItemStatus.PROCESSING:
            values.setdefault("claim_token", None)
            values.setdefault("dedupe_key", None)
            if values.get("relocate_to") is not None:
                now = database_now(connection, self.clock)
                values.update(
                    move_claimed_by=self.node_id,
                    move_token=ItemRow.claim_token,
                    move_lease_expires_at=later(now, self.lease),
                )
        result = connection.execute(
            update(ItemRow)
            .where(ItemRow.id == item_id, ItemRow.status == expected, *fence)
            .values(status=target, **values)
        )
        if result.rowcount != 1:
            raise LostClaimError(
                f"item {item_id} is no longer {expected}"
                + (" under this claim (taken over)" if fence else "")
            )
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
        item: Item | int,
        expected: ItemStatus,
        target: ItemStatus,
        event: str,
        values: Mapping[str, Any] | None = None,
        actor: str | None = None,
        **detail: Any,
    ) -> Item:
        """Compare-and-set `item` from `expected` to `target`. A claimed Item (one that
        `claim_next` handed out) is fenced on its claim token: LostClaimError once another
        node took the claim over, and nothing changes. A bare id (the operator's commands)
        is not fenced."""
        item_id, fence = claim_fence(item)
        with self.transaction() as connection:
            self._transition(
                connection,
                item_id,
                expected,
                target,
                event,
                values or {},
                actor=actor,
                fence=fence,
                **detail,
            )
            return to_item(connection.execute(select(ItemRow).where(ItemRow.id == item_id)).one())

    def record_submission(self, item: Item, job: SubmittedJob, resubmitted: bool) -> None:
        """Store the remote job before the first poll, so a restart (or the node taking
        the claim over) resumes it rather than submitting again. Fenced on the claim."""
        item_id, fence = claim_fence(item)
        with self.transaction() as connection:
            result = connection.execute(
                update(ItemRow)
                .where(ItemRow.id == item_id, ItemRow.status == ItemStatus.PROCESSING, *fence)
                .values(job_id=job.job_id, status_url=job.status_url)
            )
            if result.rowcount != 1:
                raise LostClaimError(f"item {item_id} is no longer processing under this claim")
            self._event(
                connection,
                item.id,
                "resubmitted" if resubmitted else "submitted",
                job_id=job.job_id,
            )

    def record_result_received(self, item: Item, engine: str, seconds: float) -> None:
        self.record_event(item, "result_received", engine=engine, seconds=round(seconds, 3))

    def record_result_from_spool(self, item: Item, size: int) -> None:
        self.record_event(item, "result_from_spool", bytes=size)

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
            item,
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
        self.transition(item, ItemStatus.PROCESSING, status, status.value, values, reason=reason)

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
            item,
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
            item, ItemStatus.PROCESSING, ItemStatus.PENDING, "released", values, reason=reason
        )

    # -- moving inputs --------------------------------------------------------------------

    def mark_relocated(self, item: Item, archived_path: str | None, event: str) -> None:
        """The input moved (or was deleted). Fenced on the move claim: LostClaimError, and
        no event, when another node took the move over."""
        values = {"archived_path": archived_path, "archived_at": self.clock()}
        self._end_move(item, event, values, path=archived_path)

    def clear_relocation(self, item: Item, reason: str) -> None:
        """The input stays where it is (changed or gone). Fenced like `mark_relocated`."""
        self._end_move(item, "relocation.abandoned", {}, reason=reason)

    def _end_move(self, item: Item, event: str, values: Mapping[str, Any], **detail: Any) -> None:
        item_id, fence = move_fence(item)
        with self.transaction() as connection:
            changed = connection.execute(
                update(ItemRow)
                .where(ItemRow.id == item_id, *fence)
                .values(
                    relocate_to=None,
                    move_claimed_by=None,
                    move_token=None,
                    move_lease_expires_at=None,
                    **values,
                )
            ).rowcount
            if changed != 1:
                raise LostClaimError(f"the move of item {item_id} was taken over")
            self._event(connection, item_id, event, **detail)
