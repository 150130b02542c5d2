"""Sign-in sessions that expire and can be revoked.

Gradio 6 keeps its sessions in `App.tokens`, a plain dict from the cookie's random token to the user
name: the sign-in route stores `tokens[token] = name`, every other route asks `tokens.get(token)`
for the user, and sign-out deletes entries. A plain dict never forgets, so an old cookie works for
ever, whatever happens to the account. `SessionTokens` takes its place (`install`): a dict that
remembers when each token was issued and whose `get` answers None, and forgets the token, when

- the token is older than `ttl_s` (default 12 hours), or
- the account is gone, disabled, or changed its password after the token was issued (the store's
  `sessions_valid_from`, written by the CLI in any process, is read on every request).

So an expired or revoked session stops working at its very next request. Each user keeps at most
`max_per_user` sessions (the oldest go first), so repeated sign-ins cannot grow the table.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from refcoco_edit.store import Store

DEFAULT_TTL_S = 12 * 3600.0


class SessionTokens(dict):
    """Gradio's token table (token -> user name) with expiry and revocation (see module docstring)."""

    def __init__(self, store: Store, *, ttl_s: float = DEFAULT_TTL_S, max_per_user: int = 16,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__()
        self.store = store
        self.ttl_s = ttl_s
        self.max_per_user = max_per_user
        self.clock = clock  # wall-clock seconds: compared with times the store records
        self._issued: dict[str, float] = {}
        self._lock = threading.Lock()

    def __setitem__(self, token: str, name: str) -> None:
        now = self.clock()
        with self._lock:
            for old in [t for t, at in self._issued.items() if now - at > self.ttl_s]:
                self._forget(old)
            mine = sorted((at, t) for t, at in self._issued.items() if dict.get(self, t) == name)
            for _, old in mine[:max(0, len(mine) - self.max_per_user + 1)]:
                self._forget(old)
            dict.__setitem__(self, token, name)
            self._issued[token] = now

    def _forget(self, token: str) -> None:
        dict.pop(self, token, None)
        self._issued.pop(token, None)

    def __delitem__(self, token: str) -> None:
        with self._lock:
            if token not in self:
                raise KeyError(token)
            self._forget(token)

    def pop(self, token: str, *default: Any) -> Any:
        with self._lock:
            self._issued.pop(token, None)
            return dict.pop(self, token, *default)

    def clear(self) -> None:
        with self._lock:
            dict.clear(self)
            self._issued.clear()

    def valid(self, token: str) -> bool:
        """Whether `token` still stands for a signed-in user (forgotten when not)."""
        name = dict.get(self, token)
        if name is None:
            return False
        issued = self._issued.get(token, 0.0)
        user = self.store.get_user(name)
        if (self.clock() - issued > self.ttl_s or user is None or user.disabled
                or issued < user.sessions_valid_from):
            with self._lock:
                self._forget(token)
            return False
        return True

    def get(self, token: Any, default: Any = None) -> Any:
        if not isinstance(token, str) or not self.valid(token):
            return default
        return dict.get(self, token, default)


def install(app: Any, store: Store, *, ttl_s: float = DEFAULT_TTL_S) -> SessionTokens:
    """Replace a started Gradio `App`'s token table with a `SessionTokens` (sessions made before,
    if any, are kept with their issue time taken as now)."""
    tokens = SessionTokens(store, ttl_s=ttl_s)
    for token, name in list(app.tokens.items()):
        tokens[token] = name
    app.tokens = tokens
    return tokens
