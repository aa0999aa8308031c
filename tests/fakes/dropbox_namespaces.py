"""Namespaces for the fake Dropbox: a personal account, or a member of a team space.

The fake keeps one tree of files. On a personal account the root namespace and the home
namespace are both that whole tree. In a team space (`team_space=True`) the tree is the
team's **root** namespace, and the member's **home** namespace is its sub-folder
`home_path` (`/Alice Smith`), as ../shared/reference/cloud-apis.md 2.16 describes:

- a request without `Dropbox-API-Path-Root` (or with `{".tag": "home"}`) is relative to
  the home namespace: its paths are rewritten into the tree, and the paths in its answer
  (`path_lower`, `path_display`) back out of it;
- `{".tag": "root", "root": id}` must name the account's root namespace, else 422
  `invalid_root` carrying the account's `root_info`; `{".tag": "namespace_id", ...}` must
  name the root or the home namespace, else 422 `no_permission`;
- a cursor belongs to the namespace it was made in; used in another it is `reset`.
"""

from __future__ import annotations

import json
from typing import Any

PATH_KEYS = frozenset({"path", "from_path", "to_path"})
RESULT_KEYS = {"path_lower": str.lower, "path_display": str}
ROOT_NAMESPACE_ID = "3160919009"
HOME_NAMESPACE_ID = "3160911537"


class Namespaces:
    """Which part of the tree a request sees, from its path-root header."""

    def __init__(self, team_space: bool, home_path: str = "/Alice Smith") -> None:
        self.team_space = team_space
        self.home_path = home_path if team_space else ""
        self.home_id = HOME_NAMESPACE_ID
        self.root_id = ROOT_NAMESPACE_ID if team_space else HOME_NAMESPACE_ID

    def root_info(self) -> dict[str, Any]:
        info = {"root_namespace_id": self.root_id, "home_namespace_id": self.home_id}
        if self.team_space:
            return {".tag": "team", **info, "home_path": self.home_path}
        return {".tag": "user", **info}

    def account(self) -> dict[str, Any]:
        """`users/get_current_account`: a FullAccount."""
        return {
            "account_id": "dbid:AAH4f99T0taONIb-OurWxbNQ6ywGRopQngc",
            "name": {
                "given_name": "Alice",
                "surname": "Smith",
                "familiar_name": "Alice",
                "display_name": "Alice Smith",
                "abbreviated_name": "AS",
            },
            "email": "alice@example.com",
            "email_verified": True,
            "disabled": False,
            "locale": "en",
            "referral_link": "https://db.tt/ZITNuhtI",
            "is_paired": False,
            "account_type": {".tag": "business" if self.team_space else "pro"},
            "root_info": self.root_info(),
        }

    def resolve(self, header: str | None) -> tuple[str, str] | dict[str, Any]:
        """(namespace id, prefix of its paths in the tree), or the 422 error to answer."""
        value = json.loads(header) if header else {".tag": "home"}
        tag = value.get(".tag")
        if tag == "home":
            return self.home_id, self.home_path
        if tag == "root":
            if value.get("root") != self.root_id:
                return {".tag": "invalid_root", "invalid_root": self.root_info()}
            return self.root_id, ""
        if tag == "namespace_id":
            wanted = value.get("namespace_id")
            if wanted == self.root_id:
                return self.root_id, ""
            if wanted == self.home_id:
                return self.home_id, self.home_path
            return {".tag": "no_permission"}
        raise ValueError(f"bad Dropbox-API-Path-Root {header!r}")

    def into(self, value: Any, prefix: str) -> Any:
        """Paths of a request, from the namespace into the tree."""
        if isinstance(value, dict):
            return {
                k: self._path_in(v, prefix) if k in PATH_KEYS else self.into(v, prefix)
                for k, v in value.items()
            }
        if isinstance(value, list):
            return [self.into(v, prefix) for v in value]
        return value

    @staticmethod
    def _path_in(path: Any, prefix: str) -> Any:
        if not prefix or not isinstance(path, str):
            return path
        if path == "":
            return prefix
        return prefix + path if path.startswith("/") else path

    def out(self, value: Any, prefix: str) -> Any:
        """Paths of an answer, from the tree back into the namespace."""
        if isinstance(value, dict):
            return {
                k: self._path_out(v, prefix, RESULT_KEYS[k])
                if k in RESULT_KEYS
                else self.out(v, prefix)
                for k, v in value.items()
            }
        if isinstance(value, list):
            return [self.out(v, prefix) for v in value]
        return value

    @staticmethod
    def _path_out(path: Any, prefix: str, case: Any) -> Any:
        if not prefix or not isinstance(path, str):
            return path
        head = case(prefix)
        if path == head:
            return ""
        if path.lower().startswith(prefix.lower() + "/"):
            return path[len(prefix) :]
        return None  # outside this namespace: Dropbox leaves such paths out

    @staticmethod
    def tag_cursor(cursor: str, namespace_id: str) -> str:
        return f"{namespace_id}.{cursor}"

    @staticmethod
    def untag_cursor(cursor: str, namespace_id: str) -> str | None:
        """The fake's own cursor, or None when it was made in another namespace."""
        owner, _, raw = cursor.partition(".")
        return raw if owner == namespace_id else None
