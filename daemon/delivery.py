"""Writing every output of a revision: render each `[[profile.output]]` from the one
cutout, reserve its name in the ledger, write it whole, record it. Also the outputs of a
duplicate, copied from the revision whose bytes it repeats."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import PurePosixPath

from daemon import rendering
from daemon.ledger_port import LedgerPort
from daemon.logs import context
from daemon.models import Area, Cutout, EngineResult, Item, OutputRecord, OutputSpec, Profile
from daemon.previews import cutout_previews, input_preview
from daemon.profiles import output_candidates
from daemon.secrets import redact
from daemon.storage.base import Storage

log = logging.getLogger(__name__)


class OutputWriter:
    """`renders`: images decoded and rendered at once, at most (the Photoshop engine may
    have many jobs finish together; each decoded cutout holds its pixels in memory)."""

    def __init__(
        self,
        storage: Storage,
        ledger: LedgerPort,
        *,
        fold_case: bool,
        renders: int | None = None,
        previews: Callable[[Item, bytes | None, bytes], None] | None = None,
    ) -> None:
        """`fold_case`: the storage ignores case in names (Dropbox). `previews`: told the
        status page's thumbnails (before, after) once a revision's outputs are written;
        when the engine did not see the input (Photoshop fetches it), before comes from
        the storage's thumbnail of it, and is None when there is none."""
        self.storage = storage
        self.ledger = ledger
        self.fold_case = fold_case
        self.previews = previews
        self._renders = threading.BoundedSemaphore(renders or max(2, os.cpu_count() or 1))

    def write_all(self, item: Item, profile: Profile, result: EngineResult) -> list[str]:
        """Every output of `profile`, each written and recorded before the next; the paths
        relative to output/, in the profile's order."""
        with self._renders:
            cutout = rendering.decoded(result)
            rendered = [rendering.render(cutout, spec) for spec in profile.outputs]
            previews = None
            if self.previews is not None:
                previews = cutout_previews(
                    cutout.image, cutout.alpha, with_before=isinstance(result, Cutout)
                )
        del cutout
        paths = []
        for slot, (spec, data) in enumerate(zip(profile.outputs, rendered, strict=True)):
            path = self._reserve(item, slot, spec)
            self.storage.write(Area.OUTPUT, path, data)
            self.ledger.record_output_written(item, slot, len(data))
            log.debug(
                "wrote output/%s",
                path,
                extra=context("output.written", path=item.path, output=path, bytes=len(data)),
            )
            paths.append(path)
        if self.previews is not None and previews is not None:
            before, after = previews
            self.previews(item, before if before is not None else self._before(item), after)
        return paths

    def _before(self, item: Item) -> bytes | None:
        """The "before" thumbnail of an input the engine fetched itself (Photoshop), from
        the storage's own small picture of it (Dropbox's thumbnail), asked once, now. A
        thumbnail is a nicety: any trouble leaves it out and the image goes on."""
        try:
            data = self.storage.input_thumbnail(item.as_file())
            return input_preview(data) if data is not None else None
        except Exception as exc:
            log.info(
                "no before thumbnail for %s: %s",
                item.path,
                redact(str(exc)),
                extra=context("thumbnail.unavailable", path=item.path),
            )
            return None

    def reuse(self, item: Item, profile: Profile, original: Item) -> list[str] | None:
        """The outputs of `original` (same bytes) copied to this input's names, when it has
        every output this profile asks for and they still exist; None otherwise."""
        records = self.ledger.outputs_of(original.id)
        found = [
            _matching(records, spec, slot, profile) for slot, spec in enumerate(profile.outputs)
        ]
        sources = [r for r in found if r is not None]
        if len(sources) != len(found):
            return None
        if not all(self.storage.exists(Area.OUTPUT, r.path) for r in sources):
            return None  # an earlier output is gone: make fresh ones
        paths = []
        for slot, (spec, source) in enumerate(zip(profile.outputs, sources, strict=True)):
            path = self._reserve(item, slot, spec)
            if path != source.path:
                self.storage.copy(Area.OUTPUT, source.path, path)
            self.ledger.record_output_written(item, slot, source.bytes or 0)
            paths.append(path)
        return paths

    def _reserve(self, item: Item, slot: int, spec: OutputSpec) -> str:
        candidates = output_candidates(item.path, spec.format.extension, spec.folder)
        return self.ledger.reserve_output(
            item, slot, spec.fingerprint(), candidates, fold_case=self.fold_case
        )


def _matching(
    records: list[OutputRecord], spec: OutputSpec, slot: int, profile: Profile
) -> OutputRecord | None:
    """The record rendered from an equal spec. A record from before profiles (no spec) is
    the default profile's only output, when its extension agrees."""
    fingerprint = spec.fingerprint()
    for record in records:
        if record.spec == fingerprint:
            return record
    legacy = [r for r in records if r.spec is None and r.slot == slot == 0]
    extension = PurePosixPath(legacy[0].path).suffix.lstrip(".") if legacy else None
    if legacy and not profile.match and extension == spec.format.extension:
        return legacy[0]
    return None
