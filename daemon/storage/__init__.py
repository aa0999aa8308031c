"""Storage adapters: one Storage protocol, a local folder and Dropbox."""

from __future__ import annotations

from daemon.storage.base import Storage

__all__ = ["Storage"]
