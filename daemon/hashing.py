"""Dropbox's `content_hash`, used for every storage so that dedupe works the same way."""

from __future__ import annotations

import hashlib
from typing import BinaryIO

BLOCK_SIZE = 4 * 1024 * 1024


def content_hash_bytes(data: bytes) -> str:
    """SHA-256 of the concatenated SHA-256 digests of each 4 MiB block, hex encoded."""
    outer = hashlib.sha256()
    for start in range(0, len(data), BLOCK_SIZE):
        outer.update(hashlib.sha256(data[start : start + BLOCK_SIZE]).digest())
    return outer.hexdigest()


def content_hash_stream(stream: BinaryIO) -> str:
    outer = hashlib.sha256()
    while block := stream.read(BLOCK_SIZE):
        outer.update(hashlib.sha256(block).digest())
    return outer.hexdigest()
