"""Output names and records: which input owns which name in output/, and every output of
every revision (the `outputs` table)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Connection, delete, insert, select, update

from daemon.errors import LostClaimError, PermanentItemError
from daemon.ledger.queries import LedgerReader
from daemon.ledger.schema import ItemRow, OutputRow
from daemon.models import Item, OutputRecord


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

        A re-run of the same input keeps its names (and overwrites its own outputs). With
        `fold_case` (Dropbox, which ignores case), a name that differs from another input's
        output in case only counts as taken: `Shoe.png` would overwrite `shoe.png`. A local
        folder is case-sensitive: there both names are free.
        """
        item_id, path_lower = item.id, item.path_lower
        with self.transaction() as connection:
            for candidate in candidates:
                key = candidate.lower() if fold_case else candidate
                if _owner(connection, key, path_lower) is not None:
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
        """The file of output `slot` is whole in output/."""
        item_id = item.id
        with self.transaction() as connection:
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


def outputs_of(connection: Connection, item_id: int) -> list[OutputRecord]:
    """Every output recorded for a revision, by slot."""
    rows = connection.execute(
        select(OutputRow).where(OutputRow.item_id == item_id).order_by(OutputRow.slot)
    )
    return [OutputRecord(r.slot, r.path, r.spec, r.bytes, r.written_at) for r in rows]


def _owner(connection: Connection, key: str, path_lower: str) -> str | None:
    """Another input whose output has the name key `key`."""
    owner: str | None = connection.scalar(
        select(ItemRow.path_lower)
        .join(OutputRow, OutputRow.item_id == ItemRow.id)
        .where(OutputRow.path_lower == key, ItemRow.path_lower != path_lower)
        .limit(1)
    )
    return owner
