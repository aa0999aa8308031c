"""Output names and records: which input owns which name in output/, and every output of
every revision (the `outputs` table)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import ColumnElement, Connection, delete, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from daemon.errors import LostClaimError, PermanentItemError
from daemon.ledger.claims import claim_fence, is_postgresql
from daemon.ledger.queries import LedgerReader
from daemon.ledger.schema import ItemRow, OutputNameRow, OutputRow
from daemon.models import Item, ItemStatus, OutputRecord


class OutputLedger(LedgerReader):
    """The ledger's operations on outputs."""

    def reserve_output(
        self,
        item: Item,
        slot: int,
        spec: str,
        candidates: Sequence[str],
        *,
        fold_case: bool = True,
    ) -> str:
        """Give output `slot` of this revision the first name no other input owns, atomically.

        A name's owner is a row of `output_names`, whose key is the name: two inputs can
        never both own one, however many workers or nodes reserve at once (the loser of an
        insert race finds the winner's row and tries its next candidate). A re-run of the
        same input keeps its names (and overwrites its own outputs). With `fold_case`
        (Dropbox, which ignores case), a name that differs from another input's output in
        case only counts as taken: `Shoe.png` would overwrite `shoe.png`. A local folder is
        case-sensitive: there both names are free. Fenced on a claimed Item's token.
        """
        item_id, fence = claim_fence(item)
        path_lower = item.path_lower
        with self.transaction() as connection:
            if fence:
                require_claim(connection, item_id, fence)
            insert_name = pg_insert if is_postgresql(connection) else sqlite_insert
            for candidate in candidates:
                key = candidate.lower() if fold_case else candidate
                connection.execute(
                    insert_name(OutputNameRow)
                    .values(name_key=key, owner=path_lower, reserved_at=self.clock())
                    .on_conflict_do_nothing(index_elements=["name_key"])
                )
                owner = connection.scalar(
                    select(OutputNameRow.owner).where(OutputNameRow.name_key == key)
                )
                if owner != path_lower:
                    continue
                connection.execute(
                    delete(OutputRow).where(OutputRow.item_id == item_id, OutputRow.slot == slot)
                )
                connection.execute(
                    insert(OutputRow).values(
                        item_id=item_id,
                        slot=slot,
                        path=candidate,
                        path_lower=key,
                        spec=spec,
                    )
                )
                return candidate
        raise PermanentItemError(f"every output name is taken: {', '.join(candidates)}")

    def record_output_written(self, item: Item, slot: int, size: int) -> None:
        """The file of output `slot` is whole in output/. Fenced on a claimed Item's token."""
        item_id, fence = claim_fence(item)
        with self.transaction() as connection:
            if fence:
                require_claim(connection, item_id, fence)
            changed = connection.execute(
                update(OutputRow)
                .where(OutputRow.item_id == item_id, OutputRow.slot == slot)
                .values(bytes=size, written_at=self.clock())
            ).rowcount
        if changed != 1:
            raise LostClaimError(f"output {slot} of item {item_id} is not reserved")

    def outputs_of(self, item_id: int) -> list[OutputRecord]:
        with self.transaction() as connection:
            return outputs_of(connection, item_id)


def require_claim(
    connection: Connection, item_id: int, fence: Sequence[ColumnElement[bool]]
) -> None:
    """Lock the claimed row (PostgreSQL: until this transaction ends, so no takeover lands
    in between) or raise LostClaimError if the claim is no longer current."""
    query = select(ItemRow.id).where(
        ItemRow.id == item_id, ItemRow.status == ItemStatus.PROCESSING, *fence
    )
    if is_postgresql(connection):
        query = query.with_for_update()
    if connection.scalar(query) is None:
        raise LostClaimError(f"item {item_id} is no longer processing under this claim")


def outputs_of(connection: Connection, item_id: int) -> list[OutputRecord]:
    """Every output recorded for a revision, by slot."""
    rows = connection.execute(
        select(OutputRow).where(OutputRow.item_id == item_id).order_by(OutputRow.slot)
    )
    return [OutputRecord(r.slot, r.path, r.spec, r.bytes, r.written_at) for r in rows]
