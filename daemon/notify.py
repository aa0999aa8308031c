"""sd_notify(3): tell the service manager that we are ready, alive, doing what, stopping.

One datagram per message to the unix socket named in `$NOTIFY_SOCKET` (a path, or an
abstract name written with a leading `@`). Without `$NOTIFY_SOCKET` (not under systemd,
or not `Type=notify`) every call is a no-op. The watchdog interval comes from
`$WATCHDOG_USEC` (and `$WATCHDOG_PID`, when set, must name this process).

About twenty lines of protocol do not justify a dependency (`sdnotify` does the same).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Mapping

log = logging.getLogger(__name__)


def _socket_address(value: str) -> str | None:
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]  # Linux abstract namespace
    return None


def _watchdog_seconds(environ: Mapping[str, str]) -> float | None:
    pid = environ.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None  # meant for another process (we were forked or exec'd from it)
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 1_000_000 if usec > 0 else None


class Notifier:
    """Sends `READY=1`, `WATCHDOG=1`, `STATUS=...` and `STOPPING=1`. Thread-safe."""

    def __init__(self, notify_socket: str | None, watchdog_seconds: float | None = None) -> None:
        self._address = _socket_address(notify_socket) if notify_socket else None
        if notify_socket and self._address is None:
            log.warning(
                "NOTIFY_SOCKET %r is not a unix socket; not notifying",
                notify_socket,
                extra={"event": "notify.unsupported"},
            )
        self.watchdog_seconds = watchdog_seconds if self._address else None
        self._socket: socket.socket | None = None
        self._lock = threading.Lock()
        self._warned = False

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        env = os.environ if environ is None else environ
        return cls(env.get("NOTIFY_SOCKET") or None, _watchdog_seconds(env))

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, *assignments: str) -> bool:
        """Send `KEY=value` lines as one datagram; False when not sent."""
        if self._address is None or not assignments:
            return False
        data = "\n".join(assignments).encode("utf-8", "replace")
        with self._lock:
            try:
                if self._socket is None:
                    self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._socket.sendto(data, self._address)
            except OSError as exc:
                if not self._warned:  # once: a broken socket would otherwise flood the log
                    self._warned = True
                    log.warning(
                        "cannot notify the service manager: %s",
                        exc,
                        extra={"event": "notify.failed"},
                    )
                return False
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.notify("READY=1", *_status(status))

    def watchdog(self, status: str | None = None) -> bool:
        """Say the main loop is alive. Call it only from the loop itself."""
        return self.notify("WATCHDOG=1", *_status(status))

    def status(self, text: str) -> bool:
        return self.notify(*_status(text))

    def stopping(self, status: str | None = None) -> bool:
        return self.notify("STOPPING=1", *_status(status))

    def close(self) -> None:
        with self._lock:
            if self._socket is not None:
                self._socket.close()
                self._socket = None


def _status(text: str | None) -> tuple[str, ...]:
    if not text:
        return ()
    return ("STATUS=" + " ".join(text.split()),)  # one line: the protocol splits on newlines
