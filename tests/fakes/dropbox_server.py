"""An in-memory fake of the Dropbox API v2, served over HTTP(S) on 127.0.0.1.

Faithful to ../shared/reference/cloud-apis.md Part 2 as far as the daemon reaches: RPC,
upload and download route styles, stone JSON (`.tag`, inlined structs, nested unions),
exact `Content-Type: application/json`, `%Y-%m-%dT%H:%M:%SZ` timestamps, hex revs,
real `content_hash`, case-insensitive and case-preserving paths, a change log behind the
cursors (so `continue` returns only what changed), longpoll on the notify "host" without
auth, short-lived `sl.` access tokens behind `oauth2/token`, temporary links served by the
fake itself, `save_url` jobs, batch moves, upload sessions and thumbnails
(`files/get_thumbnail_v2`, rendered by `dropbox_thumbnails`).

Two ways to aim the real SDK at it:

- recipe A, in-process: `dropbox.Dropbox(..., session=fake.session())`; the session
  rewrites `https://{api,content,notify}.dropboxapi.com` to this server.
- recipe B, a subprocess: `FakeDropbox(https=True)` and the environment from
  `fake.sdk_environment()` (`DROPBOX_API_HOST`, ... and `REQUESTS_CA_BUNDLE` pointing at
  the fake's own CA).

Test helpers work on the state directly (`put_file`, `delete`, `files_under`, ...), and
fault knobs (`rate_limit`, `server_errors`, `lock_contention`, `slow`, `expire_access_tokens`,
`forget_access_tokens`, `revoke_refresh_token` / `reinstate_refresh_token`, `reset_cursors`,
`drop_connections`, `reset_connections`, and
`go_offline` / `come_back` on the same port) make it misbehave the way Dropbox does.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import secrets
import shutil
import socket
import ssl
import struct
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import requests

from daemon.hashing import content_hash_bytes
from tests.fakes.dropbox_namespaces import Namespaces
from tests.fakes.dropbox_thumbnails import ThumbnailRefused, render_thumbnail

DROPBOX_ORIGINS = (
    "https://api.dropboxapi.com",
    "https://content.dropboxapi.com",
    "https://notify.dropboxapi.com",
)
TIMESTAMP = "%Y-%m-%dT%H:%M:%SZ"
MAX_UPLOAD = 150 * 1024 * 1024
JSON = "application/json"
RESET = 0  # a Reply with this status: reset the connection instead of answering


@dataclass(frozen=True)
class SeenRequest:
    """One request as the fake received it (for secret-leak checks)."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def text(self) -> str:
        """Everything but the Authorization header, as text."""
        headers = "\n".join(f"{k}: {v}" for k, v in self.headers.items() if k != "authorization")
        return f"{self.method} {self.path}\n{headers}\n{self.body.decode('latin-1')}"


@dataclass
class Reply:
    status: int
    body: bytes = b""
    content_type: str = JSON
    headers: dict[str, str] = field(default_factory=dict)


class Failure(Exception):
    """Raised inside a route: becomes the HTTP reply."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.status)
        self.reply = reply


class LookupFailed(Exception):
    """A `LookupError` union value, to be wrapped by the route's own error type."""

    def __init__(self, tag: str) -> None:
        super().__init__(tag)
        self.error: dict[str, Any] = {".tag": tag}


class WriteFailed(Exception):
    """A `WriteError` union value, to be wrapped by the route's own error type."""

    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(error[".tag"])
        self.error = error


def conflict(kind: str) -> WriteFailed:
    return WriteFailed({".tag": "conflict", "conflict": {".tag": kind}})


def json_reply(value: Any, status: int = 200, headers: dict[str, str] | None = None) -> Reply:
    return Reply(status, json.dumps(value).encode(), JSON, headers or {})


def text_reply(status: int, text: str, headers: dict[str, str] | None = None) -> Reply:
    return Reply(status, text.encode(), "text/plain; charset=utf-8", headers or {})


def summary_of(error: Any) -> str:
    """`path/not_found/..`: the tags along a union chain, as Dropbox's error_summary."""
    tags: list[str] = []
    while isinstance(error, dict) and ".tag" in error:
        tag = error[".tag"]
        tags.append(tag)
        error = error.get(tag, error.get("reason"))
    return "/".join(tags) + "/.."


def route_error(error: dict[str, Any]) -> Failure:
    return Failure(json_reply({"error_summary": summary_of(error), "error": error}, 409))


def bad_input(route: str, message: str) -> Failure:
    return Failure(text_reply(400, f'Error in call to API function "{route}": {message}'))


def tag_of(value: Any) -> str:
    """Void union members arrive as `"add"` or `{".tag": "add"}`: accept both."""
    return value[".tag"] if isinstance(value, dict) else str(value)


def split_path(display: str) -> tuple[str, str]:
    parent, _, name = display.rpartition("/")
    return parent, name


def numbered(display: str, number: int, suffix: str = "") -> str:
    """`/a/b.jpg` -> `/a/b (1).jpg` (or `/a/b (conflicted copy).jpg`)."""
    parent, name = split_path(display)
    stem, dot, ext = name.rpartition(".")
    if not stem:
        stem, dot, ext = name, "", ""
    label = suffix or str(number)
    return f"{parent}/{stem} ({label}){dot}{ext}"


@dataclass
class Node:
    kind: str  # "file" | "folder"
    path_display: str
    id: str
    data: bytes = b""
    rev: str = ""
    content_hash: str = ""
    server_modified: str = ""
    client_modified: str = ""

    def metadata(self, tagged: bool = True) -> dict[str, Any]:
        meta: dict[str, Any] = {".tag": self.kind} if tagged else {}
        meta.update(
            name=split_path(self.path_display)[1],
            path_lower=self.path_display.lower(),
            path_display=self.path_display,
            id=self.id,
        )
        if self.kind == "file":
            meta.update(
                client_modified=self.client_modified,
                server_modified=self.server_modified,
                rev=self.rev,
                size=len(self.data),
                is_downloadable=True,
                content_hash=self.content_hash,
            )
        return meta


def deleted_metadata(display: str) -> dict[str, Any]:
    return {
        ".tag": "deleted",
        "name": split_path(display)[1],
        "path_lower": display.lower(),
        "path_display": display,
    }


@dataclass
class Fault:
    kind: str  # rate_limit | server_error | lock | slow | reset
    routes: frozenset[str] | None
    remaining: int | None
    probability: float = 1.0
    retry_after: int | None = 1
    body: str = "json"
    reason: str = "too_many_requests"
    status: int = 500
    seconds: float = 0.0


class RewritingSession(requests.Session):
    """Recipe A: sends the SDK's `https://*.dropboxapi.com` requests to the fake instead."""

    def __init__(self, base_url: str, verify: str | bool = True) -> None:
        super().__init__()
        self.base_url = base_url.rstrip("/")
        self.verify = verify
        self.trust_env = False  # no proxies, no REQUESTS_CA_BUNDLE override

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> Any:
        text = url.decode() if isinstance(url, bytes) else url
        for origin in DROPBOX_ORIGINS:
            if text.startswith(origin):
                text = self.base_url + text[len(origin) :]
                break
        return super().request(method, text, *args, **kwargs)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, fake: FakeDropbox, context: ssl.SSLContext | None, port: int = 0) -> None:
        self.fake = fake
        self.context = context
        self.open_sockets: set[socket.socket] = set()
        self.sockets_lock = threading.Lock()
        super().__init__(("127.0.0.1", port), _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = super().get_request()
        if self.context is not None:
            sock = self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        with self.sockets_lock:
            self.open_sockets.add(sock)
        return sock, address

    def shutdown_request(self, request: Any) -> None:
        with self.sockets_lock:
            self.open_sockets.discard(request)
        super().shutdown_request(request)

    def drop_connections(self) -> None:
        with self.sockets_lock:
            sockets = list(self.open_sockets)
        for sock in sockets:
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that hang up or fail the TLS handshake are not the fake's problem


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes
    server: _Server

    def setup(self) -> None:
        if isinstance(self.request, ssl.SSLSocket):
            self.request.settimeout(10)
            self.request.do_handshake()
            self.request.settimeout(None)
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        self._answer("POST")

    def do_GET(self) -> None:
        self._answer("GET")

    def _answer(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        reply = self.server.fake.dispatch(method, self.path, headers, body)
        if reply.status == RESET:
            self._reset()
            return
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        self.send_header("X-Dropbox-Request-Id", secrets.token_hex(8))
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(reply.body)

    def _reset(self) -> None:
        """Close with SO_LINGER 0: the client gets a TCP RST where it waits for an answer."""
        self.close_connection = True
        with suppress(OSError):
            self.request.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.request.close()


class FakeDropbox:
    """One Dropbox account with one app, in memory, behind a local HTTP(S) server; with
    `team_space=True` a team member's (see tests/fakes/dropbox_namespaces.py)."""

    def __init__(
        self,
        *,
        https: bool = False,
        app_key: str = "fake-app-key",
        app_secret: str | None = "fake-app-secret",
        access_token_ttl: int = 14400,
        temporary_link_ttl: float = 14400.0,
        page_size: int = 500,
        clock: Callable[[], float] = time.time,
        seed: int = 0,
        team_space: bool = False,
    ) -> None:
        self.https = https
        self.namespaces = Namespaces(team_space)
        self.app_key = app_key
        self.app_secret = app_secret
        self.access_token_ttl = access_token_ttl
        self.temporary_link_ttl = temporary_link_ttl
        self.page_size = page_size
        self.clock = clock
        self.max_request_bytes = MAX_UPLOAD
        self.longpoll_max_wait: float | None = None  # answer `changes: false` sooner
        self.longpoll_backoff: int | None = None
        self.batch_in_progress_polls = 1  # check_v2 answers in_progress this many times
        self.save_url_delay = 0.0
        self.counts: Counter[str] = Counter()
        self.faulted: Counter[str] = Counter()  # faults served, by kind
        self.faulted_routes: Counter[tuple[str, str]] = Counter()  # by (kind, route)
        # Called as hook(route, arg) before a route runs, outside the lock: a test can
        # change the state "between" two requests of the client (delete a file, reset).
        self.hooks: list[Callable[[str, Any], None]] = []
        self.requests: list[SeenRequest] = []
        # access token -> the refresh token it was issued for: which client made a request
        self.token_owner: dict[str, str] = {}
        self._cond = threading.Condition()
        self._random = random.Random(seed)
        self._nodes: dict[str, Node] = {}
        self._log: list[tuple[int, str, dict[str, Any] | None, str]] = []
        self._revisions: dict[str, Node] = {}
        self._generation = 0
        self._serial = 0
        self._faults: list[Fault] = []
        self._sessions: dict[str, dict[str, Any]] = {}
        self._jobs: dict[str, dict[str, Any]] = {}
        self._links: dict[str, tuple[str, float]] = {}
        self._refresh_tokens: dict[str, dict[str, Any]] = {}
        self._access_tokens: dict[str, float] = {}
        self._forgotten: set[str] = set()  # access tokens now invalid (still secrets)
        self._codes: dict[str, str | None] = {}
        self._threads: list[threading.Thread] = []
        self._stopping = False
        self._server: _Server | None = None
        self._serve_thread: threading.Thread | None = None
        self._offline_port = 0
        self._tmp: str | None = None
        self.ca_path: str | None = None
        self._context: ssl.SSLContext | None = None
        self.refresh_token = self.issue_refresh_token()
        self._routes: dict[str, tuple[str, bool, Callable[[Any, bytes], Reply]]] = {
            "files/list_folder": ("rpc", True, self._list_folder),
            "files/list_folder/continue": ("rpc", True, self._list_folder_continue),
            "files/list_folder/get_latest_cursor": ("rpc", True, self._get_latest_cursor),
            "files/list_folder/longpoll": ("rpc", False, self._longpoll),
            "files/get_metadata": ("rpc", True, self._get_metadata),
            "files/download": ("download", True, self._download),
            "files/get_thumbnail_v2": ("download", True, self._get_thumbnail),
            "files/upload": ("upload", True, self._upload),
            "files/upload_session/start": ("upload", True, self._session_start),
            "files/upload_session/append_v2": ("upload", True, self._session_append),
            "files/upload_session/finish": ("upload", True, self._session_finish),
            "files/get_temporary_link": ("rpc", True, self._get_temporary_link),
            "files/save_url": ("rpc", True, self._save_url),
            "files/save_url/check_job_status": ("rpc", True, self._save_url_check),
            "files/create_folder_v2": ("rpc", True, self._create_folder),
            "files/move_v2": ("rpc", True, self._move),
            "files/copy_v2": ("rpc", True, self._copy),
            "files/move_batch_v2": ("rpc", True, self._move_batch),
            "files/move_batch/check_v2": ("rpc", True, self._move_batch_check),
            "files/delete_v2": ("rpc", True, self._delete),
            "users/get_current_account": ("rpc", True, self._get_current_account),
        }

    # ------------------------------------------------------------------ lifecycle

    def start(self, port: int = 0) -> FakeDropbox:
        """Listen on `port` (0: any free one)."""
        if self.https and self._context is None:
            self._context = self._make_tls()
        self._server = _Server(self, self._context, port)
        self._serve_thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._serve_thread.start()
        return self

    def go_offline(self) -> int:
        """Stop listening and drop open connections, keeping every file, token, cursor and
        the TLS authority: Dropbox unreachable. Returns the port `come_back()` reuses."""
        assert self._server is not None, "start() the fake first"
        port = self.port
        self._server.shutdown()
        self._server.drop_connections()
        self._server.server_close()
        self._server = None
        if self._serve_thread is not None:
            self._serve_thread.join(5)
        self._offline_port = port
        return port

    def come_back(self) -> None:
        """Listen again on the port `go_offline()` left, with the same state."""
        self.start(self._offline_port)

    def drop_connections(self) -> None:
        """Reset every open connection (clients see `ConnectionResetError` or EOF)."""
        if self._server is not None:
            self._server.drop_connections()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._server is not None:
            self._server.shutdown()
            self._server.drop_connections()
            self._server.server_close()
            self._server = None
        if self._serve_thread is not None:
            self._serve_thread.join(5)
        for thread in self._threads:
            thread.join(5)
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> FakeDropbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _make_tls(self) -> ssl.SSLContext:
        import trustme

        authority = trustme.CA()
        cert = authority.issue_cert("127.0.0.1", "localhost")
        self._tmp = tempfile.mkdtemp(prefix="fake-dropbox-")
        self.ca_path = str(Path(self._tmp) / "ca.pem")
        authority.cert_pem.write_to_path(self.ca_path)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(context)
        return context

    @property
    def port(self) -> int:
        assert self._server is not None, "start() the fake first"
        return int(self._server.server_address[1])

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.https else 'http'}://{self.host}"

    def session(self) -> RewritingSession:
        """Recipe A: a session for `dropbox.Dropbox(session=...)` (the caller closes it)."""
        return RewritingSession(self.url, self.ca_path or True)

    def sdk_environment(self) -> dict[str, str]:
        """Recipe B: environment for a process that imports `dropbox` afterwards."""
        env = {
            "DROPBOX_API_HOST": self.host,
            "DROPBOX_API_CONTENT_HOST": self.host,
            "DROPBOX_API_NOTIFY_HOST": self.host,
        }
        if self.ca_path:
            env["REQUESTS_CA_BUNDLE"] = self.ca_path
            env["CURL_CA_BUNDLE"] = self.ca_path
        return env

    def daemon_environment(self) -> dict[str, str]:
        """`sdk_environment()` plus the credentials a `cutoutd` process needs."""
        return {
            **self.sdk_environment(),
            "DROPBOX_APP_KEY": self.app_key,
            "DROPBOX_APP_SECRET": self.app_secret or "",
            "DROPBOX_REFRESH_TOKEN": self.refresh_token,
        }

    # ------------------------------------------------------------------ test helpers

    def put_file(
        self, path: str, data: bytes, client_modified: str | None = None
    ) -> dict[str, Any]:
        """Write a file as another Dropbox client would (overwrite); returns its metadata."""
        with self._cond:
            node = self._store(path, data, mode="overwrite", client_modified=client_modified)
            return node.metadata()

    def make_folder(self, path: str) -> None:
        with self._cond:
            self._make_parents(path)

    def delete(self, path: str) -> None:
        with self._cond:
            self._remove(path.lower())

    def metadata(self, path: str) -> dict[str, Any] | None:
        with self._cond:
            node = self._nodes.get(path.lower())
            return node.metadata() if node else None

    def files_under(self, prefix: str) -> dict[str, bytes]:
        """`{path_display: content}` of every file below `prefix` (case-insensitive)."""
        start = prefix.lower().rstrip("/") + "/"
        with self._cond:
            return {
                n.path_display: n.data
                for lower, n in sorted(self._nodes.items())
                if n.kind == "file" and lower.startswith(start)
            }

    def requests_of(self, refresh_token: str, since: int = 0) -> list[SeenRequest]:
        """Requests from `since` on (an index into `requests`) that carried an access token
        issued for `refresh_token`: what one client among several did."""
        with self._cond:
            seen = self.requests[since:]
            owners = dict(self.token_owner)
        return [
            request
            for request in seen
            if owners.get(request.headers.get("authorization", "").removeprefix("Bearer "))
            == refresh_token
        ]

    @staticmethod
    def cursor_position(cursor: str) -> tuple[int, int]:
        """Where a cursor this fake issued stands in the change log, as a key that grows as
        a client pages and continues: (changes seen up to, offset into the current page)."""
        raw = cursor.rpartition(".")[2].removeprefix("AAF")  # without its namespace tag
        state = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
        return int(state["a"]), int(state["o"])

    def reset_cursors(self) -> None:
        """Every cursor handed out so far now answers 409 `reset`."""
        with self._cond:
            self._generation += 1
            self._cond.notify_all()

    def issue_refresh_token(self, pkce: bool = False) -> str:
        token = "fake-refresh-" + secrets.token_urlsafe(24)
        with self._cond:
            self._refresh_tokens[token] = {"pkce": pkce, "revoked": False}
        return token

    def revoke_refresh_token(self, token: str | None = None) -> None:
        with self._cond:
            self._refresh_tokens[token or self.refresh_token]["revoked"] = True

    def reinstate_refresh_token(self, token: str | None = None) -> None:
        """The app is authorized again: the refresh token works anew."""
        with self._cond:
            self._refresh_tokens[token or self.refresh_token]["revoked"] = False

    def forget_access_tokens(self) -> None:
        """Every access token issued so far answers 401 `invalid_access_token` (revoked
        from the account's settings); new ones can still be had with the refresh token."""
        with self._cond:
            self._forgotten.update(self._access_tokens)
            self._access_tokens.clear()

    def expire_access_tokens(self) -> None:
        """Every access token issued so far answers 401 `expired_access_token`."""
        with self._cond:
            for token in self._access_tokens:
                self._access_tokens[token] = 0.0

    @property
    def access_tokens(self) -> list[str]:
        """Every access token ever issued (for secret-leak checks)."""
        with self._cond:
            return [*self._access_tokens, *sorted(self._forgotten)]

    @property
    def refresh_tokens(self) -> list[str]:
        """Every refresh token issued (the initial one and those from `authorization_code`)."""
        with self._cond:
            return list(self._refresh_tokens)

    @property
    def temporary_link_tokens(self) -> list[str]:
        """The secret part of every temporary link handed out (`/tl/<token>/<name>`)."""
        with self._cond:
            return list(self._links)

    def approve(self, authorize_url: str) -> str:
        """What the user does in the browser: returns the code Dropbox would show."""
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(authorize_url).query))
        if query.get("client_id") != self.app_key:
            raise ValueError("authorize URL names another app")
        code = "fake-code-" + secrets.token_urlsafe(16)
        with self._cond:
            self._codes[code] = query.get("code_challenge")
        return code

    # ------------------------------------------------------------------ fault knobs

    def rate_limit(
        self,
        count: int | None = 1,
        *,
        retry_after: int | None = 1,
        routes: list[str] | None = None,
        body: str = "json",
        reason: str = "too_many_requests",
        probability: float = 1.0,
    ) -> None:
        """Answer 429 `count` times (None: forever, each with `probability`)."""
        self._add_fault(
            Fault("rate_limit", _routes(routes), count, probability, retry_after, body, reason)
        )

    def server_errors(
        self,
        count: int | None = 1,
        *,
        status: int = 500,
        routes: list[str] | None = None,
        probability: float = 1.0,
        retry_after: int | None = None,
    ) -> None:
        """Answer `status` (5xx, plain text) `count` times; with `retry_after`, a
        `Retry-After` header too (Dropbox's 503 when it sheds load)."""
        self._add_fault(
            Fault("server_error", _routes(routes), count, probability, retry_after, status=status)
        )

    def lock_contention(self, count: int | None = 1, *, routes: list[str] | None = None) -> None:
        """Write routes answer 409 with their `too_many_write_operations` error."""
        self._add_fault(Fault("lock", _routes(routes), count))

    def slow(
        self, seconds: float, *, routes: list[str] | None = None, count: int | None = None
    ) -> None:
        self._add_fault(Fault("slow", _routes(routes), count, seconds=seconds))

    def reset_connections(
        self, count: int | None = 1, *, routes: list[str] | None = None, probability: float = 1.0
    ) -> None:
        """Reset the connection (TCP RST, no answer) instead of answering, `count` times
        (None: forever, each with `probability`). The request is not carried out."""
        self._add_fault(Fault("reset", _routes(routes), count, probability))

    def reseed(self, seed: int) -> None:
        """Start the random draws of probabilistic faults again from `seed`."""
        with self._cond:
            self._random.seed(seed)

    def clear_faults(self) -> None:
        with self._cond:
            self._faults.clear()
            self.longpoll_backoff = None

    def _add_fault(self, fault: Fault) -> None:
        with self._cond:
            self._faults.append(fault)

    def _take_faults(self, route: str) -> list[Fault]:
        taken = []
        with self._cond:
            for fault in self._faults:
                if fault.routes is None and route == "oauth2/token":
                    continue  # name the token endpoint explicitly to fault it
                if fault.routes is not None and route not in fault.routes:
                    continue
                if fault.remaining == 0:
                    continue
                if fault.probability < 1.0 and self._random.random() >= fault.probability:
                    continue
                if fault.remaining is not None:
                    fault.remaining -= 1
                taken.append(fault)
        return taken

    def _fault_reply(self, route: str, faults: list[Fault]) -> Reply | None:
        for fault in faults:
            if fault.kind == "slow":
                time.sleep(fault.seconds)
        for fault in faults:
            if fault.kind != "slow" and (fault.kind != "lock" or route in LOCK_ERRORS):
                with self._cond:
                    self.faulted[fault.kind] += 1
                    self.faulted_routes[(fault.kind, route)] += 1
            if fault.kind == "rate_limit":
                headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after else {}
                if fault.body == "text":
                    return text_reply(429, "Too Many Requests", headers)
                error: dict[str, Any] = {"reason": {".tag": fault.reason}}
                if fault.retry_after is not None:
                    error["retry_after"] = fault.retry_after
                return json_reply(
                    {"error_summary": f"{fault.reason}/..", "error": error}, 429, headers
                )
            if fault.kind == "server_error":
                retry = {"Retry-After": str(fault.retry_after)} if fault.retry_after else {}
                return text_reply(fault.status, "Internal Server Error", retry)
            if fault.kind == "lock" and route in LOCK_ERRORS:
                error = LOCK_ERRORS[route]
                return json_reply({"error_summary": summary_of(error), "error": error}, 409)
            if fault.kind == "reset":
                return Reply(RESET)
        return None

    # ------------------------------------------------------------------ dispatch

    def dispatch(self, method: str, raw_path: str, headers: dict[str, str], body: bytes) -> Reply:
        path = urllib.parse.urlsplit(raw_path).path
        with self._cond:
            self.requests.append(SeenRequest(method, raw_path, headers, body[:1_000_000]))
        if path.startswith("/tl/"):
            self.counts["temporary_link"] += 1
            return self._serve_link(path)
        route = "oauth2/token" if path == "/oauth2/token" else path.removeprefix("/2/")
        self.counts[route] += 1
        try:
            faults = self._take_faults(route)
            contended = any(fault.kind == "lock" for fault in faults)
            reply = self._fault_reply(route, faults)
            if reply is not None:
                return reply
            if route == "oauth2/token":
                return self._token(body)
            if route not in self._routes or not path.startswith("/2/"):
                return text_reply(400, f"Unknown API function: {route!r}")
            style, needs_auth, handler = self._routes[route]
            if needs_auth:
                self._check_auth(route, headers)
            elif "authorization" in headers:
                raise bad_input(route, "this route takes no Authorization header")
            if style == "rpc":
                arg = json.loads(body.decode() or "null")
            else:
                arg = json.loads(headers.get("dropbox-api-arg", "null"))
            namespace = self.namespaces.resolve(headers.get("dropbox-api-path-root"))
            if isinstance(namespace, dict):  # a root the account does not have
                return json_reply({"error_summary": summary_of(namespace), "error": namespace}, 422)
            arg = self._enter_namespace(arg, *namespace)
            for hook in list(self.hooks):
                hook(route, arg)
            if route == "files/move_batch_v2":
                return self._leave_namespace(self._move_batch(arg, body, contended), *namespace)
            return self._leave_namespace(handler(arg, body), *namespace)
        except Failure as failure:
            return failure.reply
        except (ValueError, KeyError, TypeError) as exc:
            return text_reply(400, f'Error in call to API function "{route}": bad argument {exc}')

    def _enter_namespace(self, arg: Any, namespace_id: str, prefix: str) -> Any:
        """The request's paths into the tree; its cursor checked against the namespace."""
        arg = self.namespaces.into(arg, prefix)
        if isinstance(arg, dict) and isinstance(arg.get("cursor"), str):
            cursor = self.namespaces.untag_cursor(arg["cursor"], namespace_id)
            if cursor is None:
                raise route_error({".tag": "reset"})
            arg = {**arg, "cursor": cursor}
        return arg

    def _leave_namespace(self, reply: Reply, namespace_id: str, prefix: str) -> Reply:
        """The answer's paths back into the namespace, its cursor tagged with it."""
        if reply.status != 200:
            return reply
        result = reply.headers.get("Dropbox-API-Result")
        if result is not None:
            value = self.namespaces.out(json.loads(result), prefix)
            reply.headers["Dropbox-API-Result"] = json.dumps(value)
        if reply.content_type == JSON and reply.body:
            value = self.namespaces.out(json.loads(reply.body), prefix)
            if isinstance(value, dict) and isinstance(value.get("cursor"), str):
                value["cursor"] = self.namespaces.tag_cursor(value["cursor"], namespace_id)
            reply.body = json.dumps(value).encode()
        return reply

    def _check_auth(self, route: str, headers: dict[str, str]) -> None:
        header = headers.get("authorization", "")
        if not header.startswith("Bearer "):
            raise bad_input(route, 'Must provide HTTP header "Authorization"')
        token = header.removeprefix("Bearer ")
        with self._cond:
            expires = self._access_tokens.get(token)
        if expires is None:
            error = {".tag": "invalid_access_token"}
        elif expires <= self.clock():
            error = {".tag": "expired_access_token"}
        else:
            return
        raise Failure(json_reply({"error_summary": summary_of(error), "error": error}, 401))

    # ------------------------------------------------------------------ oauth2/token

    def _token(self, body: bytes) -> Reply:
        form = dict(urllib.parse.parse_qsl(body.decode()))
        if form.get("client_id") != self.app_key:
            return json_reply({"error": "invalid_client", "error_description": "unknown app"}, 400)
        grant = form.get("grant_type")
        with self._cond:
            if grant == "refresh_token":
                info = self._refresh_tokens.get(form.get("refresh_token", ""))
                if info is None or info["revoked"]:
                    return _invalid_grant("refresh token is invalid or revoked")
                if (
                    not info["pkce"]
                    and self.app_secret
                    and form.get("client_secret") != self.app_secret
                ):
                    return json_reply(
                        {"error": "invalid_client", "error_description": "bad secret"}, 400
                    )
                issued = self._new_access_token()
                self.token_owner[issued["access_token"]] = form.get("refresh_token", "")
                return json_reply(issued)
            if grant == "authorization_code":
                code = form.get("code", "")
                if code not in self._codes:
                    return _invalid_grant("code doesn't exist or has expired")
                challenge = self._codes.pop(code)
                verifier = form.get("code_verifier")
                if challenge is not None:
                    digest = hashlib.sha256((verifier or "").encode()).digest()
                    if base64.urlsafe_b64encode(digest).decode().rstrip("=") != challenge:
                        return _invalid_grant("invalid code verifier")
                elif form.get("client_secret") != self.app_secret:
                    return json_reply({"error": "invalid_client"}, 400)
                refresh = "fake-refresh-" + secrets.token_urlsafe(24)
                self._refresh_tokens[refresh] = {"pkce": challenge is not None, "revoked": False}
                answer = self._new_access_token()
                answer.update(
                    refresh_token=refresh,
                    scope="files.content.read files.content.write",
                    uid="12345",
                    account_id="dbid:fake-account",
                )
                return json_reply(answer)
        return json_reply({"error": "unsupported_grant_type"}, 400)

    def _new_access_token(self) -> dict[str, Any]:
        token = "sl." + secrets.token_urlsafe(32)
        self._access_tokens[token] = self.clock() + self.access_token_ttl
        return {"access_token": token, "token_type": "bearer", "expires_in": self.access_token_ttl}

    # ------------------------------------------------------------------ state (hold _cond)

    def _now(self) -> str:
        return datetime.fromtimestamp(self.clock(), UTC).strftime(TIMESTAMP)

    def _next_serial(self) -> int:
        self._serial += 1
        return self._serial

    def _record(self, lower: str, node: Node | None, display: str) -> None:
        self._log.append((len(self._log) + 1, lower, node.metadata() if node else None, display))
        self._cond.notify_all()

    def _make_parents(self, folder_display: str) -> str:
        """Create missing folders; returns the display path with existing folders' case."""
        shown = ""
        for part in [p for p in folder_display.split("/") if p]:
            candidate = f"{shown}/{part}"
            node = self._nodes.get(candidate.lower())
            if node is None:
                node = Node("folder", candidate, "id:" + secrets.token_hex(11))
                self._nodes[candidate.lower()] = node
                self._record(candidate.lower(), node, candidate)
            elif node.kind == "file":
                raise conflict("file_ancestor")
            shown = node.path_display
        return shown

    def _free_name(self, display: str, suffix: str = "") -> str:
        number = 1
        while True:
            candidate = numbered(display, number, suffix)
            if candidate.lower() not in self._nodes:
                return candidate
            number += 1

    def _store(
        self,
        path: str,
        data: bytes,
        *,
        mode: Any = "overwrite",
        autorename: bool = False,
        client_modified: str | None = None,
        strict_conflict: bool = False,
    ) -> Node:
        if not path.startswith("/") or path.endswith("/") or "//" in path:
            raise WriteFailed({".tag": "malformed_path"})
        parent, name = split_path(path)
        display = f"{self._make_parents(parent)}/{name}"
        existing = self._nodes.get(display.lower())
        kind = tag_of(mode)
        if existing is not None and existing.kind == "folder":
            if not autorename:
                raise conflict("folder")
            display = self._free_name(display)
        elif existing is not None:
            display = existing.path_display
            same = existing.data == data and not strict_conflict
            if kind == "update" and existing.rev != mode.get("update") and not same:
                if not autorename:
                    raise conflict("file")
                display = self._free_name(display, "conflicted copy")
            elif kind == "add" and not same:
                if not autorename:
                    raise conflict("file")
                display = self._free_name(display)
            elif same:
                return existing
        elif kind == "update" and strict_conflict:
            raise conflict("file")
        node = Node(
            "file",
            display,
            existing.id if existing and existing.kind == "file" else "id:" + secrets.token_hex(11),
            data,
            f"{self._next_serial():09x}{secrets.token_hex(4)}",
            content_hash_bytes(data),
            self._now(),
            client_modified or self._now(),
        )
        self._nodes[display.lower()] = node
        self._revisions[node.rev] = node
        self._record(display.lower(), node, display)
        return node

    def _lookup(self, path: str) -> Node:
        if path.startswith("rev:"):
            node = self._revisions.get(path[4:])
            if node is None:
                raise LookupFailed("not_found")
            return node
        if path.startswith("id:"):
            for node in self._nodes.values():
                if node.id == path:
                    return node
            raise LookupFailed("not_found")
        if not path.startswith("/"):
            raise LookupFailed("malformed_path")
        node = self._nodes.get(path.lower().rstrip("/"))
        if node is None:
            raise LookupFailed("not_found")
        return node

    def _remove(self, lower: str) -> Node:
        node = self._nodes.get(lower)
        if node is None:
            raise LookupFailed("not_found")
        for child in sorted((k for k in self._nodes if k.startswith(lower + "/")), reverse=True):
            gone = self._nodes.pop(child)
            self._record(child, None, gone.path_display)
        del self._nodes[lower]
        self._record(lower, None, node.path_display)
        return node

    def _relocate(self, source: str, target: str, autorename: bool, keep_source: bool) -> Node:
        node = self._lookup(source)
        if not target.startswith("/") or target.endswith("/"):
            raise WriteFailed({".tag": "malformed_path"})
        old = node.path_display.lower()
        if target.lower() == old or target.lower().startswith(old + "/"):
            raise Failure(_relocation_failure({".tag": "duplicated_or_nested_paths"}))
        parent, name = split_path(target)
        display = f"{self._make_parents(parent)}/{name}"
        existing = self._nodes.get(display.lower())
        if existing is not None:
            if not autorename:
                raise conflict(existing.kind)
            display = self._free_name(display)
        moved = [node] + [n for k, n in sorted(self._nodes.items()) if k.startswith(old + "/")]
        if not keep_source:
            self._remove(old)
        first: Node | None = None
        for item in moved:
            new_display = display + item.path_display[len(node.path_display) :]
            copy = Node(
                item.kind,
                new_display,
                item.id if not keep_source else "id:" + secrets.token_hex(11),
            )
            if item.kind == "file":
                copy.data, copy.content_hash = item.data, item.content_hash
                copy.rev = f"{self._next_serial():09x}{secrets.token_hex(4)}"
                copy.server_modified, copy.client_modified = self._now(), item.client_modified
                self._revisions[copy.rev] = copy
            self._nodes[new_display.lower()] = copy
            self._record(new_display.lower(), copy, new_display)
            first = first or copy
        assert first is not None
        return first

    # ------------------------------------------------------------------ listing

    def _encode_cursor(self, state: dict[str, Any]) -> str:
        raw = json.dumps(state, separators=(",", ":")).encode()
        return "AAF" + base64.urlsafe_b64encode(raw).decode().rstrip("=")

    def _decode_cursor(self, cursor: str) -> dict[str, Any]:
        try:
            raw = cursor.removeprefix("AAF")
            state: dict[str, Any] = json.loads(
                base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
            )
        except ValueError:
            raise route_error({".tag": "reset"}) from None
        if state.get("g") != self._generation:
            raise route_error({".tag": "reset"})
        return state

    @staticmethod
    def _in_scope(lower: str, folder: str, recursive: bool) -> bool:
        if recursive:
            return lower.startswith(folder + "/")
        return lower.rpartition("/")[0] == folder

    def _window(self, state: dict[str, Any]) -> list[dict[str, Any]]:
        """Entries between log positions `a` (exclusive; -1 = full listing) and `b`."""
        latest: dict[str, tuple[int, dict[str, Any] | None, str]] = {}
        for seq, lower, snapshot, shown in self._log[: state["b"]]:
            if self._in_scope(lower, state["f"], state["r"]):
                latest[lower] = (seq, snapshot, shown)
        entries = []
        for seq, snapshot, shown in sorted(latest.values(), key=lambda v: v[0]):
            if state["a"] >= 0 and seq <= state["a"]:
                continue
            if snapshot is not None:
                entries.append(snapshot)
            elif state["a"] >= 0:
                entries.append(deleted_metadata(shown))
        return entries

    def _page(self, state: dict[str, Any]) -> Reply:
        entries = self._window(state)
        limit = state["l"] or self.page_size
        page = entries[state["o"] : state["o"] + limit]
        more = state["o"] + limit < len(entries)
        if more:
            cursor = dict(state, o=state["o"] + limit, p=True)
        else:
            cursor = dict(state, a=state["b"], o=0, p=False)
        return json_reply(
            {"entries": page, "cursor": self._encode_cursor(cursor), "has_more": more}
        )

    def _scope(self, route: str, arg: dict[str, Any]) -> dict[str, Any]:
        path = arg["path"]
        if path == "/":
            raise bad_input(route, 'Specify the root folder as an empty string rather than as "/".')
        folder = ""
        if path:
            try:
                node = self._lookup(path)
            except LookupFailed as exc:
                raise route_error({".tag": "path", "path": exc.error}) from None
            if node.kind != "folder":
                raise route_error({".tag": "path", "path": {".tag": "not_folder"}})
            folder = node.path_display.lower()
        limit = int(arg.get("limit") or 0)
        if limit and not 1 <= limit <= 2000:
            raise bad_input(route, "limit must be between 1 and 2000")
        return {
            "f": folder,
            "r": bool(arg.get("recursive")),
            "l": limit,
            "g": self._generation,
            "a": -1,
            "b": len(self._log),
            "o": 0,
            "p": True,
        }

    def _list_folder(self, arg: dict[str, Any], body: bytes) -> Reply:
        with self._cond:
            return self._page(self._scope("files/list_folder", arg))

    def _get_latest_cursor(self, arg: dict[str, Any], body: bytes) -> Reply:
        with self._cond:
            state = dict(
                self._scope("files/list_folder/get_latest_cursor", arg), a=len(self._log), p=False
            )
            return json_reply({"cursor": self._encode_cursor(state)})

    def _list_folder_continue(self, arg: dict[str, Any], body: bytes) -> Reply:
        with self._cond:
            state = self._decode_cursor(arg["cursor"])
            if not state["p"]:
                state = dict(state, b=len(self._log), o=0)
            return self._page(state)

    def _has_changes(self, state: dict[str, Any]) -> bool:
        if state["p"]:
            return True
        return any(
            self._in_scope(entry[1], state["f"], state["r"]) for entry in self._log[state["b"] :]
        )

    def _longpoll(self, arg: dict[str, Any], body: bytes) -> Reply:
        timeout = int(arg.get("timeout", 30))
        if not 30 <= timeout <= 480:
            raise bad_input("files/list_folder/longpoll", "timeout must be between 30 and 480")
        wait = min(timeout, self.longpoll_max_wait) if self.longpoll_max_wait else timeout
        deadline = time.monotonic() + wait
        with self._cond:
            while True:
                state = self._decode_cursor(arg["cursor"])
                changes = self._has_changes(state)
                remaining = deadline - time.monotonic()
                if changes or remaining <= 0 or self._stopping:
                    break
                self._cond.wait(remaining)
            answer: dict[str, Any] = {"changes": changes}
            if self.longpoll_backoff:
                answer["backoff"] = self.longpoll_backoff
            return json_reply(answer)

    # ------------------------------------------------------------------ files

    def _get_current_account(self, arg: Any, body: bytes) -> Reply:
        return json_reply(self.namespaces.account())

    def _get_metadata(self, arg: dict[str, Any], body: bytes) -> Reply:
        if arg["path"] == "":
            raise bad_input("files/get_metadata", "The root folder is unsupported.")
        with self._cond:
            try:
                return json_reply(self._lookup(arg["path"]).metadata())
            except LookupFailed as exc:
                raise route_error({".tag": "path", "path": exc.error}) from None

    def _download(self, arg: dict[str, Any], body: bytes) -> Reply:
        with self._cond:
            try:
                node = self._lookup(f"rev:{arg['rev']}" if arg.get("rev") else arg["path"])
            except LookupFailed as exc:
                raise route_error({".tag": "path", "path": exc.error}) from None
            if node.kind != "file":
                raise route_error({".tag": "path", "path": {".tag": "not_file"}})
            result = json.dumps(node.metadata(tagged=False))
        return Reply(200, node.data, "application/octet-stream", {"Dropbox-API-Result": result})

    def _get_thumbnail(self, arg: dict[str, Any], body: bytes) -> Reply:
        resource = arg["resource"]
        if tag_of(resource) != "path":
            raise route_error({".tag": "not_found"})  # shared links: not modelled
        with self._cond:
            try:
                node = self._lookup(resource["path"])
            except LookupFailed as exc:
                raise route_error({".tag": "path", "path": exc.error}) from None
            if node.kind != "file":
                raise route_error({".tag": "path", "path": {".tag": "not_file"}})
            name, data = split_path(node.path_display)[1], node.data
            result = json.dumps({"file_metadata": node.metadata(tagged=False)})
        try:
            thumbnail = render_thumbnail(name, data, arg)
        except ThumbnailRefused as exc:
            raise route_error({".tag": exc.tag}) from None
        return Reply(200, thumbnail, "application/octet-stream", {"Dropbox-API-Result": result})

    def _check_payload(self, arg: dict[str, Any], body: bytes, too_large: dict[str, Any]) -> None:
        if len(body) > self.max_request_bytes:
            raise route_error(too_large)
        expected = arg.get("content_hash")
        if expected and expected != content_hash_bytes(body):
            raise route_error({".tag": "content_hash_mismatch"})

    def _commit(self, commit: dict[str, Any], data: bytes) -> Node:
        return self._store(
            commit["path"],
            data,
            mode=commit.get("mode", "add"),
            autorename=bool(commit.get("autorename")),
            client_modified=commit.get("client_modified"),
            strict_conflict=bool(commit.get("strict_conflict")),
        )

    def _upload(self, arg: dict[str, Any], body: bytes) -> Reply:
        self._check_payload(arg, body, {".tag": "payload_too_large"})
        with self._cond:
            try:
                node = self._commit(arg, body)
            except WriteFailed as exc:
                raise route_error(
                    {".tag": "path", "reason": exc.error, "upload_session_id": ""}
                ) from None
            return json_reply(node.metadata(tagged=False))

    def _session_start(self, arg: dict[str, Any], body: bytes) -> Reply:
        self._check_payload(arg or {}, body, {".tag": "payload_too_large"})
        session_id = "pid_upload_session:" + secrets.token_urlsafe(16)
        with self._cond:
            self._sessions[session_id] = {
                "data": bytearray(body),
                "closed": bool((arg or {}).get("close")),
            }
        return json_reply({"session_id": session_id})

    def _session_lookup(self, cursor: dict[str, Any]) -> dict[str, Any]:
        session = self._sessions.get(cursor["session_id"])
        if session is None:
            raise LookupFailed("not_found")
        if int(cursor["offset"]) != len(session["data"]):
            failure = LookupFailed("incorrect_offset")
            failure.error["correct_offset"] = len(session["data"])
            raise failure
        return session

    def _session_append(self, arg: dict[str, Any], body: bytes) -> Reply:
        self._check_payload(arg, body, {".tag": "payload_too_large"})
        with self._cond:
            try:
                session = self._session_lookup(arg["cursor"])
            except LookupFailed as exc:
                raise route_error(exc.error) from None
            if session["closed"]:
                raise route_error({".tag": "closed"})
            session["data"].extend(body)
            session["closed"] = bool(arg.get("close"))
        return json_reply(None)

    def _session_finish(self, arg: dict[str, Any], body: bytes) -> Reply:
        self._check_payload(arg, body, {".tag": "payload_too_large"})
        with self._cond:
            try:
                session = self._session_lookup(arg["cursor"])
            except LookupFailed as exc:
                raise route_error({".tag": "lookup_failed", "lookup_failed": exc.error}) from None
            data = bytes(session["data"]) + body
            try:
                node = self._commit(arg["commit"], data)
            except WriteFailed as exc:
                raise route_error({".tag": "path", "path": exc.error}) from None
            del self._sessions[arg["cursor"]["session_id"]]
            return json_reply(node.metadata(tagged=False))

    def _get_temporary_link(self, arg: dict[str, Any], body: bytes) -> Reply:
        with self._cond:
            try:
                node = self._lookup(arg["path"])
            except LookupFailed as exc:
                raise route_error({".tag": "path", "path": exc.error}) from None
            if node.kind != "file":
                raise route_error({".tag": "path", "path": {".tag": "not_file"}})
            token = secrets.token_urlsafe(24)
            self._links[token] = (node.rev, self.clock() + self.temporary_link_ttl)
            name = urllib.parse.quote(split_path(node.path_display)[1])
            link = f"{self.url}/tl/{token}/{name}"
            return json_reply({"metadata": node.metadata(tagged=False), "link": link})

    def _serve_link(self, path: str) -> Reply:
        token = path.split("/")[2]
        with self._cond:
            rev, expires = self._links.get(token, ("", 0.0))
            node = self._revisions.get(rev)
            if node is None or expires <= self.clock():
                return text_reply(410, "Gone")
            return Reply(200, node.data, "application/octet-stream")

    def _save_url(self, arg: dict[str, Any], body: bytes) -> Reply:
        path, url = arg["path"], arg["url"]
        if not url.startswith(("http://", "https://")):
            raise route_error({".tag": "invalid_url"})
        job_id = "fake-job-" + secrets.token_urlsafe(12)
        with self._cond:
            self._jobs[job_id] = {"status": {".tag": "in_progress"}}
        thread = threading.Thread(target=self._fetch_url, args=(job_id, path, url), daemon=True)
        self._threads.append(thread)
        thread.start()
        return json_reply({".tag": "async_job_id", "async_job_id": job_id})

    def _fetch_url(self, job_id: str, path: str, url: str) -> None:
        time.sleep(self.save_url_delay)
        context = ssl.create_default_context(cafile=self.ca_path) if self.ca_path else None
        opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
        )
        try:
            with opener.open(url, timeout=30) as response:
                data = response.read()
        except OSError:
            status: dict[str, Any] = {".tag": "failed", "failed": {".tag": "download_failed"}}
        else:
            with self._cond:
                try:
                    node = self._store(path, data, mode="add", autorename=True)
                    status = {".tag": "complete", **node.metadata(tagged=False)}
                except WriteFailed as exc:
                    status = {".tag": "failed", "failed": {".tag": "path", "path": exc.error}}
        with self._cond:
            self._jobs[job_id]["status"] = status

    def _save_url_check(self, arg: dict[str, Any], body: bytes) -> Reply:
        with self._cond:
            job = self._jobs.get(arg["async_job_id"])
            if job is None:
                raise route_error({".tag": "invalid_async_job_id"})
            return json_reply(job["status"])

    def _create_folder(self, arg: dict[str, Any], body: bytes) -> Reply:
        path = arg["path"]
        if not path.startswith("/") or path.endswith("/"):
            raise route_error({".tag": "path", "path": {".tag": "malformed_path"}})
        with self._cond:
            existing = self._nodes.get(path.lower())
            try:
                if existing is not None:
                    if not arg.get("autorename"):
                        raise conflict(existing.kind)
                    path = self._free_name(path)
                self._make_parents(path)
            except WriteFailed as exc:
                raise route_error({".tag": "path", "path": exc.error}) from None
            return json_reply({"metadata": self._nodes[path.lower()].metadata(tagged=False)})

    def _relocation(self, arg: dict[str, Any], keep_source: bool) -> dict[str, Any]:
        try:
            node = self._relocate(
                arg["from_path"], arg["to_path"], bool(arg.get("autorename")), keep_source
            )
        except LookupFailed as exc:
            raise Failure(
                _relocation_failure({".tag": "from_lookup", "from_lookup": exc.error})
            ) from None
        except WriteFailed as exc:
            raise Failure(_relocation_failure({".tag": "to", "to": exc.error})) from None
        return node.metadata()

    def _move(self, arg: dict[str, Any], body: bytes) -> Reply:
        with self._cond:
            return json_reply({"metadata": self._relocation(arg, keep_source=False)})

    def _copy(self, arg: dict[str, Any], body: bytes) -> Reply:
        with self._cond:
            return json_reply({"metadata": self._relocation(arg, keep_source=True)})

    def _move_batch(self, arg: dict[str, Any], body: bytes, contended: bool = False) -> Reply:
        entries = arg["entries"]
        if not 1 <= len(entries) <= 1000:
            raise bad_input("files/move_batch_v2", "entries must hold 1 to 1000 items")
        results = []
        with self._cond:
            for entry in entries:
                if contended:
                    results.append(
                        {".tag": "failure", "failure": {".tag": "too_many_write_operations"}}
                    )
                    continue
                try:
                    meta = self._relocation(dict(entry, autorename=arg.get("autorename")), False)
                    results.append({".tag": "success", "success": meta})
                except Failure as failure:
                    error = json.loads(failure.reply.body)["error"]
                    results.append(
                        {
                            ".tag": "failure",
                            "failure": {".tag": "relocation_error", "relocation_error": error},
                        }
                    )
            if self.batch_in_progress_polls < 0:
                return json_reply({".tag": "complete", "entries": results})
            job_id = "dbjid:" + secrets.token_urlsafe(16)
            self._jobs[job_id] = {"polls": self.batch_in_progress_polls, "entries": results}
            return json_reply({".tag": "async_job_id", "async_job_id": job_id})

    def _move_batch_check(self, arg: dict[str, Any], body: bytes) -> Reply:
        with self._cond:
            job = self._jobs.get(arg["async_job_id"])
            if job is None or "entries" not in job:
                raise route_error({".tag": "invalid_async_job_id"})
            if job["polls"] > 0:
                job["polls"] -= 1
                return json_reply({".tag": "in_progress"})
            return json_reply({".tag": "complete", "entries": job["entries"]})

    def _delete(self, arg: dict[str, Any], body: bytes) -> Reply:
        with self._cond:
            try:
                node = self._lookup(arg["path"])
            except LookupFailed as exc:
                raise route_error({".tag": "path_lookup", "path_lookup": exc.error}) from None
            parent_rev = arg.get("parent_rev")
            if parent_rev and (node.kind != "file" or node.rev != parent_rev):
                raise route_error({".tag": "path_write", "path_write": conflict("file").error})
            self._remove(node.path_display.lower())
            return json_reply({"metadata": node.metadata()})


LOCK_ERRORS: dict[str, dict[str, Any]] = {
    "files/upload": {
        ".tag": "path",
        "reason": {".tag": "too_many_write_operations"},
        "upload_session_id": "",
    },
    "files/upload_session/finish": {".tag": "too_many_write_operations"},
    "files/move_v2": {".tag": "to", "to": {".tag": "too_many_write_operations"}},
    "files/copy_v2": {".tag": "to", "to": {".tag": "too_many_write_operations"}},
    "files/delete_v2": {".tag": "too_many_write_operations"},
    "files/create_folder_v2": {".tag": "path", "path": {".tag": "too_many_write_operations"}},
    "files/save_url": {".tag": "path", "path": {".tag": "too_many_write_operations"}},
}


def _routes(routes: list[str] | None) -> frozenset[str] | None:
    return frozenset(routes) if routes is not None else None


def _invalid_grant(description: str) -> Reply:
    return json_reply({"error": "invalid_grant", "error_description": description}, 400)


def _relocation_failure(error: dict[str, Any]) -> Reply:
    return json_reply({"error_summary": summary_of(error), "error": error}, 409)


@contextmanager
def running(**options: Any) -> Iterator[FakeDropbox]:
    """`with running(https=True) as fake:` starts and stops a fake."""
    fake = FakeDropbox(**options)
    fake.start()
    try:
        yield fake
    finally:
        fake.stop()
