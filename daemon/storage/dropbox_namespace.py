"""Dropbox namespaces (`[dropbox] path_root`), part of the Dropbox adapter.

In a team space the team's folders live in the account's **root** namespace and the
member's own folder is a sub-folder of it; plain API calls see only the member's **home**
namespace. With `path_root = "root"` (the default) every call carries
`Dropbox-API-Path-Root: {".tag": "root", "root": <root_namespace_id>}` (the SDK's
`with_path_root`), so paths mean what the Dropbox web UI shows; on a personal account
root and home are the same namespace and nothing changes. `"home"` keeps the home
namespace.

A cursor belongs to the namespace it was made in: the adapter hands out cursors tagged
`ns:<id>|<cursor>`, and one from another namespace (the account joined or left a team,
or `path_root` changed) is answered with `CursorResetError`. Untagged cursors, from
versions that only knew the home namespace, count as the home namespace's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dropbox import common as sdk_common

from daemon.errors import CursorResetError


@dataclass(frozen=True, slots=True)
class Namespace:
    """The namespace in use and the account it belongs to."""

    id: str
    kind: str  # "root" or "home": which of the account's namespaces this is
    team: bool  # the account's root is a team space's
    root_id: str
    home_id: str
    account_type: str = ""  # Dropbox's own word: basic, pro or business

    @property
    def other_id(self) -> str | None:
        """The account's other namespace, when it differs from this one."""
        other = self.home_id if self.kind == "root" else self.root_id
        return other if other != self.id else None

    def describe(self) -> str:
        account = "team space" if self.team else "personal account"
        if self.account_type:
            account = f"{account} ({self.account_type})"
        if self.other_id is None:
            return f"{account}; namespace {self.id} (root and home are the same)"
        return f"{account}; {self.kind} namespace {self.id}"

    def tag(self, cursor: str) -> str:
        return f"ns:{self.id}|{cursor}"

    def untag(self, cursor: str) -> str:
        """The Dropbox cursor inside `cursor`; `CursorResetError` if it is another
        namespace's."""
        owner, raw = self.home_id, cursor
        if cursor.startswith("ns:") and "|" in cursor:
            owner, raw = cursor[3:].split("|", 1)
        if owner != self.id:
            raise CursorResetError(
                f"the stored Dropbox cursor belongs to namespace {owner}, but the {self.kind} "
                f"namespace {self.id} is in use now (the account joined or left a team, or "
                "[dropbox] path_root changed)"
            )
        return raw


def select_namespace(client: Any, path_root: str) -> tuple[Namespace, Any]:
    """Read the account's `root_info`; the namespace for `path_root` and the client whose
    every call (RPC, upload, download, longpoll) is rooted there."""
    account = client.users_get_current_account()
    info = account.root_info
    team = isinstance(info, sdk_common.TeamRootInfo)
    root_id, home_id = str(info.root_namespace_id), str(info.home_namespace_id)
    kind = str(getattr(account.account_type, "_tag", "") or "")
    if path_root == "home":
        return Namespace(home_id, "home", team, root_id, home_id, kind), client
    rooted = client.with_path_root(sdk_common.PathRoot.root(root_id))
    return Namespace(root_id, "root", team, root_id, home_id, kind), rooted


def other_client(client: Any, namespace: Namespace) -> Any:
    """A client rooted in the account's other namespace (for `cutoutd check`'s hint)."""
    if namespace.kind == "root":
        return client.with_path_root(sdk_common.PathRoot.home)
    return client.with_path_root(sdk_common.PathRoot.root(namespace.root_id))
