"""Engines: one Engine protocol, the local U²-Net model and the Photoshop API."""

from __future__ import annotations

from daemon.engines.base import Engine

__all__ = ["Engine"]
