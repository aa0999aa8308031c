"""This node's membership of the ledger: register at start (a live node with the same
`node_id` refuses this one), then a heartbeat thread that keeps this node's claims and
leases alive and returns other nodes' expired claims to `pending` on every beat.

The heartbeat also re-reads the schema's revision now and then: after `cutoutd ledger
migrate` (or a node upgraded past the schema) a node whose code does not match claims
nothing, and says why, until it does.
"""

from __future__ import annotations

import logging
import threading
from typing import Protocol

from daemon.errors import CutoutdError, NodeConflictError, TransientError
from daemon.logs import context
from daemon.models import Item

log = logging.getLogger(__name__)
SCHEMA_CHECK_EVERY = 10  # beats


class NodeRegistry(Protocol):
    """The ledger operations membership needs (daemon.ledger.Ledger has them)."""

    node_id: str

    def register_node(self) -> None: ...

    def heartbeat(self) -> None: ...

    def deregister_node(self) -> None: ...

    def recover_expired(self) -> list[Item]: ...

    def check_schema(self) -> str | None: ...


def heartbeat_interval(lease_seconds: float, configured: float = 0.0) -> float:
    """`[ledger] heartbeat_seconds`, or lease/6 (at least 1 s): a lease outlives five
    missed beats."""
    if configured > 0:
        return min(configured, lease_seconds / 2)
    return max(lease_seconds / 6, 1.0)


class Membership:
    def __init__(self, ledger: NodeRegistry, every: float) -> None:
        self.ledger = ledger
        self.every = every
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None
        self.problem: str | None = None  # why beats fail (shown by health), None when fine
        self.recovered = 0  # claims taken back from dead nodes, all beats together

    def start(self) -> None:
        """Register (NodeConflictError: another live node has this name), take the first
        look at the schema, and start beating."""
        self.ledger.register_node()
        self._check_schema()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
        self._thread.start()

    def beat(self) -> None:
        """One beat: extend our claims and leases, then take back expired claims."""
        self.ledger.heartbeat()
        recovered = self.ledger.recover_expired()
        self.recovered += len(recovered)
        for item in recovered:
            log.warning(
                "took back %s from a node that stopped beating",
                item.path,
                extra=context("recovery.expired", path=item.path),
            )

    def close(self) -> None:
        """Stop beating and leave the ledger (a clean stop: the name is free at once)."""
        self._halt.set()
        if self._thread is None:
            return
        self._thread.join()
        try:
            self.ledger.deregister_node()
        except CutoutdError as exc:  # the row simply expires
            log.warning("cannot deregister this node: %s", exc)

    def _run(self) -> None:
        beats = 0
        while not self._halt.wait(self.every):
            beats += 1
            try:
                self.beat()
                if beats % SCHEMA_CHECK_EVERY == 0:
                    self._check_schema()
            except NodeConflictError as exc:
                self.problem = str(exc)
                log.error("%s", exc, extra=context("node.conflict"))
                return
            except TransientError as exc:
                if self.problem is None:
                    log.warning("heartbeat failed: %s", exc, extra=context("node.heartbeat"))
                self.problem = f"heartbeat failed: {exc}"
                continue
            if self.problem is not None:
                log.info("heartbeats work again", extra=context("node.heartbeat"))
            self.problem = None

    def _check_schema(self) -> None:
        problem = self.ledger.check_schema()
        if problem is not None:
            log.error(
                "claiming nothing: %s", problem, extra=context("ledger.schema", problem=problem)
            )
