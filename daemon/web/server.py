"""The one HTTP server: the status page, /metrics and /healthz, served by waitress (a
production WSGI server with its own small thread pool) from a daemon thread."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Sequence

from flask import Flask
from waitress.server import create_server

from daemon.errors import CutoutdError
from daemon.logs import context

log = logging.getLogger(__name__)
THREADS = 4


class WebServer:
    def __init__(
        self, app: Flask, address: str, port: int, closing: Sequence[Callable[[], None]] = ()
    ) -> None:
        self._closing = list(closing)  # what to release after the server stops
        try:
            self._server = create_server(
                app,
                host=address,
                port=port,
                threads=THREADS,
                ident="cutoutd",
                channel_timeout=30,
                clear_untrusted_proxy_headers=True,
            )
        except OSError as exc:
            raise CutoutdError(
                f"cannot serve the status page on {address}:{port}: {exc.strerror or exc}"
            ) from None
        self.address = address
        self._thread = threading.Thread(target=self._run, name="http", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.effective_port)

    @property
    def url(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"http://{host}:{self.port}/"

    def _run(self) -> None:
        with contextlib.suppress(OSError):  # the socket closed under the loop at shutdown
            self._server.run()

    def start(self) -> None:
        self._thread.start()
        log.info(
            "status page on %s (also /metrics and /healthz)",
            self.url,
            extra=context("http.listening", port=self.port, address=self.address),
        )

    def close(self) -> None:
        """Finish the requests in hand, then stop listening and drop idle connections."""
        self._server.task_dispatcher.shutdown(timeout=5)
        self._server.close()
        for channel in list(self._server._map.values()):  # keep-alive connections
            channel.close()
        self._thread.join(5)
        for release in self._closing:
            release()
