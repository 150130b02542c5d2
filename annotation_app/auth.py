"""Sign-in and roles, backed by the store's users.

Gradio's sign-in page calls `StoreAuth.sign_in(name, password)`; after that every request carries
the user name, and each handler asks `require_role` what that user may do. The role is read from the
store on every action, never from anything the browser sends, so an annotator cannot accept a
sample by calling the review endpoint, and a role change (or a disabled account) takes effect at the
next click.

Why sign-in is built this way:
- Gradio 6 awaits the auth function on its event loop when it is a coroutine function, else calls it
  right there, on the loop that serves every request; a password hash (scrypt, ~50 ms) done there
  stalls everyone. `sign_in` runs the hash in a small thread pool (`workers` threads; scrypt releases
  the GIL) and refuses at once when `max_pending` checks already wait, so a flood costs the other
  users nothing but the pool's threads.
- Names and passwords are capped (`MAX_USER_NAME`, `MAX_PASSWORD`) before anything is hashed,
  stored or logged.
- Failures are limited three ways, each over a sliding `window_s`: per (name, address) pair
  (`max_failures`), per address over all names (`per_address`), and globally (`global_failures`).
  Locking by name alone would let anyone lock the real user out; by (name, address), an attacker
  elsewhere locks out only themselves. The global limit caps the hashing a distributed flood can
  cause; it holds sign-ins back for at most `window_s` after the flood stops, and signed-in sessions
  carry on. Every lock ends by itself when its failures leave the window; a success clears its pair.
- The failure records live in bounded LRU tables (`max_tracked` keys, at most `limit` times each),
  so memory stays bounded however many distinct names and addresses are tried.
- The client address comes from `ClientAddressMiddleware` (uvicorn has already applied the
  `X-Forwarded-For` of a trusted local proxy), because Gradio passes only the name and password.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from annotation_app.errors import AccessDenied, NotSignedIn
from refcoco_edit.store.db import MAX_USER_NAME

if TYPE_CHECKING:
    from refcoco_edit.store import Store

log = logging.getLogger(__name__)

# Who may do what. Reviewers and admins may also annotate (small teams); only they may review.
ANNOTATE = ("annotator", "reviewer", "admin")
REVIEW = ("reviewer", "admin")
RATE = ("annotator", "reviewer", "admin")
ADMIN = ("admin",)

MAX_PASSWORD = 1024
CLIENT_ADDRESS: ContextVar[str] = ContextVar("client_address", default="")


def require_role(store, username: str | None, allowed: tuple[str, ...], action: str):
    """The store's `User` for `username` when their role is in `allowed`; else `AccessDenied`."""
    if not username:
        raise NotSignedIn(f"sign in to {action}")
    user = store.get_user(username)
    if user is None:
        raise AccessDenied(f"unknown user {username!r}: ask an admin to add you")
    if user.disabled:
        raise AccessDenied(f"the account {username!r} is disabled")
    if user.role not in allowed:
        raise AccessDenied(f"{username} is {_article(user.role)} {user.role}; only "
                           f"{' or '.join(r + 's' for r in allowed)} may {action}")
    return user


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


class ClientAddressMiddleware:
    """ASGI middleware that makes the client's address visible to the sign-in check (`CLIENT_ADDRESS`)."""

    def __init__(self, app: Callable) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        token = CLIENT_ADDRESS.set(str(client[0]) if client else "")
        try:
            await self.app(scope, receive, send)
        finally:
            CLIENT_ADDRESS.reset(token)


class FailureLog:
    """Recent failure times per key, in an LRU table of at most `max_keys` keys and `limit` times a key."""

    def __init__(self, limit: int, window_s: float, max_keys: int) -> None:
        self.limit = limit
        self.window_s = window_s
        self.max_keys = max_keys
        self._times: OrderedDict[Hashable, deque[float]] = OrderedDict()

    def count(self, key: Hashable, now: float) -> int:
        q = self._times.get(key)
        if q is None:
            return 0
        while q and now - q[0] > self.window_s:
            q.popleft()
        if not q:
            del self._times[key]
            return 0
        return len(q)

    def full(self, key: Hashable, now: float) -> bool:
        return self.count(key, now) >= self.limit

    def add(self, key: Hashable, now: float) -> None:
        q = self._times.get(key)
        if q is None:
            q = self._times[key] = deque(maxlen=self.limit)
            while len(self._times) > self.max_keys:
                self._times.popitem(last=False)
        else:
            self._times.move_to_end(key)
        q.append(now)

    def clear(self, key: Hashable) -> None:
        self._times.pop(key, None)

    def __len__(self) -> int:
        return len(self._times)


class StoreAuth:
    """Sign-in against the store's accounts, with the limits of the module docstring.

    `sign_in` is the coroutine Gradio gets as `auth=`; calling the object itself checks synchronously
    in the calling thread (scripts and tests)."""

    def __init__(self, store: Store, *, max_failures: int = 5, window_s: float = 60.0, per_address: int = 50,
                 global_failures: int = 1000, max_tracked: int = 10_000, workers: int = 1, max_pending: int = 8,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.window_s = window_s
        self.clock = clock
        self.max_pending = max_pending
        self._pairs = FailureLog(max_failures, window_s, max_tracked)
        self._addresses = FailureLog(per_address, window_s, max_tracked)
        self._global = FailureLog(global_failures, window_s, 1)
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sign-in")
        self._pending = 0

    @property
    def max_failures(self) -> int:
        return self._pairs.limit

    def tracked(self) -> int:
        """How many (name, address) pairs and addresses have failures on record."""
        with self._lock:
            return len(self._pairs) + len(self._addresses)

    def refusal(self, username: Any, password: Any, address: str = "") -> str | None:
        """Why this attempt is refused without checking the password (None: check it)."""
        if not isinstance(username, str) or not username or not isinstance(password, str):
            return "no name or password"
        if len(username) > MAX_USER_NAME or len(password) > MAX_PASSWORD:
            return "name or password too long"
        now = self.clock()
        with self._lock:
            if self._global.full(None, now):
                return "too many failed sign-ins on this server"
            if self._addresses.full(address, now):
                return "too many failed sign-ins from this address"
            if self._pairs.full((username, address), now):
                return "too many failures for this name from this address"
        return None

    def _record(self, username: str, address: str, ok: bool) -> None:
        now = self.clock()
        with self._lock:
            if ok:
                self._pairs.clear((username, address))
                return
            self._pairs.add((username, address), now)
            self._addresses.add(address, now)
            self._global.add(None, now)
        log.info("failed sign-in for %r from %s", username, address or "an unknown address")

    def _refused(self, username: Any, address: str, reason: str) -> bool:
        shown = username if isinstance(username, str) and len(username) <= MAX_USER_NAME else "(too long)"
        log.warning("sign-in refused for %r from %s: %s", shown, address or "an unknown address", reason)
        return False

    def __call__(self, username: str, password: str, address: str = "") -> bool:
        reason = self.refusal(username, password, address)
        if reason:
            return self._refused(username, address, reason)
        ok = self.store.verify_user(username, password) is not None
        self._record(username, address, ok)
        return ok

    async def sign_in(self, username: str, password: str) -> bool:
        """Gradio's auth: limits checked on the loop, the password hash in the bounded pool."""
        address = CLIENT_ADDRESS.get()
        reason = self.refusal(username, password, address)
        if reason:
            return self._refused(username, address, reason)
        with self._lock:
            if self._pending >= self.max_pending:
                busy = True
            else:
                busy = False
                self._pending += 1
        if busy:
            return self._refused(username, address, f"{self.max_pending} sign-ins already waiting")
        try:
            user = await asyncio.get_running_loop().run_in_executor(
                self._pool, self.store.verify_user, username, password)
        finally:
            with self._lock:
                self._pending -= 1
        self._record(username, address, user is not None)
        return user is not None

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
