"""Sign-in and roles, backed by the store's users.

Gradio's sign-in page calls `StoreAuth(name, password)`; after that every request carries the
user name, and each handler asks `require_role` what that user may do. The role is read from the
store on every action, never from anything the browser sends, so an annotator cannot accept a
sample by calling the review endpoint, and a role change takes effect at the next click.

Repeated failed sign-ins for one name are slowed down: after `max_failures` failures within
`window_s` seconds, that name is refused (even with the right password) until the window has passed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable

from annotation_app.errors import AccessDenied, NotSignedIn

log = logging.getLogger(__name__)

# Who may do what. Reviewers and admins may also annotate (small teams); only they may review.
ANNOTATE = ("annotator", "reviewer", "admin")
REVIEW = ("reviewer", "admin")
RATE = ("annotator", "reviewer", "admin")
ADMIN = ("admin",)


def require_role(store, username: str | None, allowed: tuple[str, ...], action: str):
    """The store's `User` for `username` when their role is in `allowed`; else `AccessDenied`."""
    if not username:
        raise NotSignedIn(f"sign in to {action}")
    user = store.get_user(username)
    if user is None:
        raise AccessDenied(f"unknown user {username!r}: ask an admin to add you")
    if user.role not in allowed:
        raise AccessDenied(f"{username} is {_article(user.role)} {user.role}; only "
                           f"{' or '.join(r + 's' for r in allowed)} may {action}")
    return user


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


class StoreAuth:
    """`auth=` callable for `Blocks.launch`: True when the store verifies the name and password."""

    def __init__(self, store, *, max_failures: int = 5, window_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.max_failures = max_failures
        self.window_s = window_s
        self.clock = clock
        self._failures: dict[str, deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    def locked_out(self, username: str) -> bool:
        now = self.clock()
        with self._lock:
            q = self._failures.get(username)
            if not q:
                return False
            while q and now - q[0] > self.window_s:
                q.popleft()
            return len(q) >= self.max_failures

    def __call__(self, username: str, password: str) -> bool:
        if not username or password is None:
            return False
        if self.locked_out(username):
            log.warning("sign-in refused for %r: too many failures", username)
            return False
        ok = self.store.verify_user(username, password) is not None
        if not ok:
            with self._lock:
                self._failures[username].append(self.clock())
            log.info("failed sign-in for %r", username)
        return ok
