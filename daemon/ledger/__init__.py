"""The ledger: the only package that imports SQLAlchemy."""

from __future__ import annotations

from daemon.ledger.store import Ledger, default_ledger_url, default_state_directory

__all__ = ["Ledger", "default_ledger_url", "default_state_directory"]
