"""Checked uploads: example images for the composition pipeline (and study images), and a guard on
Gradio's upload route that holds every signed-in user to a quota.

All limits live in one place, `UploadLimits`: the size of one file and of one image, and each
user's quota (bytes and files within `keep_s`, after which an upload is deleted and stops counting).

At the route, `UploadGuard` (an ASGI middleware in front of `POST /gradio_api/upload`) names the
user from the session cookie, refuses a request whose declared size (or whose user's file count)
would go over the quota before a byte is stored, and, once Gradio has stored the files, opens each
with `refcoco_edit.imaging.files.open_image` (PNG, JPEG or WebP only, pixel limit from the header):
a file that is not such an image is deleted and the request refused with a message naming it.
Quota use is kept in memory (a restart forgets it; Gradio's own cache cleanup still deletes files
after a day).

An upload then reaches a handler as the path of the file Gradio wrote to its upload folder; the
browser never names a path of its own (Gradio refuses payload paths outside its folder, and
`read_upload` checks again that the file lies inside the folder it was given). The file is then:

1. checked for size on disk (`max_bytes`) before it is read, and read with that bound;
2. recognised by its first bytes, not its name: PNG, JPEG or WebP only;
3. opened with only that decoder through `open_image`, its pixel count checked against
   `max_pixels` *before* decoding (a small PNG can claim 100 000 x 100 000 pixels: a decompression
   bomb), then decoded with Pillow's bomb warning turned into an error;
4. converted to RGB (transparent pixels on black, as the pipelines do) and stored as a lossless PNG
   in the store's own folder, `<store>.uploads/`, content-addressed like the store's images.

Only the resulting hash travels in the session; the file the browser sent is not kept by the app.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from annotation_app.errors import UploadError
from refcoco_edit.errors import InputError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UploadLimits:
    """Every limit on uploads (see the module docstring); an app's configuration may set the two
    sizes (`limits_for`)."""

    max_bytes: int = 20 * 1024 * 1024  # one file: a 4K photo as JPEG or PNG fits
    max_pixels: int = 4096 * 4096  # one image: 16.8 M pixels, far above COCO's 640 x 640
    quota_bytes: int = 1024 * 1024 * 1024  # one user's uploads within keep_s
    quota_files: int = 1000  # one user's uploads within keep_s (an image editor uploads its layers too)
    keep_s: float = 24 * 3600.0  # an upload is deleted, and stops counting, after this long

    def __post_init__(self) -> None:
        for name in ("max_bytes", "max_pixels", "quota_bytes", "quota_files", "keep_s"):
            if not getattr(self, name) > 0:
                raise InputError(f"upload limit {name} must be positive, got {getattr(self, name)!r}")
        if self.max_bytes > self.quota_bytes:
            raise InputError(f"upload limit max_bytes ({self.max_bytes}) is over quota_bytes ({self.quota_bytes})")


LIMITS = UploadLimits()


def limits_for(config: Any) -> UploadLimits:
    """The limits an app runs with: `LIMITS`, with the file and image sizes its configuration sets."""
    return replace(LIMITS, max_bytes=int(getattr(config, "max_upload_bytes", LIMITS.max_bytes)),
                   max_pixels=int(getattr(config, "max_upload_pixels", LIMITS.max_pixels)))


MAX_UPLOAD_BYTES = LIMITS.max_bytes
MAX_UPLOAD_PIXELS = LIMITS.max_pixels
FORMATS = ("PNG", "JPEG", "WEBP")  # what uploads may be, as Pillow names the formats


def sniff_format(head: bytes) -> str | None:
    """The image format the first bytes announce, or None when it is not one we accept."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return None


def decode_image(data: bytes, *, name: str = "upload", max_pixels: int = MAX_UPLOAD_PIXELS):
    """Bytes of a PNG, JPEG or WebP -> an RGB PIL image, refusing other types and bombs."""
    from refcoco_edit.errors import DataError
    from refcoco_edit.imaging.files import open_image

    fmt = sniff_format(data[:16])
    if fmt is None:
        raise UploadError(f"{name}: not a PNG, JPEG or WebP image (the file's first bytes say otherwise)")
    try:
        im = open_image(data, what=name, mode=None, max_pixels=max_pixels, formats=[fmt])
    except DataError as exc:
        raise UploadError(str(exc)) from None
    if getattr(im, "n_frames", 1) > 1:
        raise UploadError(f"{name}: animated images are not accepted")
    return to_rgb(im)


def to_rgb(im):
    from PIL import Image

    if im.mode == "RGB":
        return im
    if "A" in im.getbands() or "transparency" in im.info:
        rgba = im.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba).convert("RGB")
    return im.convert("RGB")


def read_upload(path: str | os.PathLike, *, upload_root: str | os.PathLike | None,
                max_bytes: int = MAX_UPLOAD_BYTES, max_pixels: int = MAX_UPLOAD_PIXELS):
    """The checked RGB image of an uploaded file (see the module docstring).

    `upload_root`: the folder uploads must lie in (Gradio's upload folder); None only for files an
    admin names on the command line.
    """
    if path is None or str(path) == "":
        raise UploadError("no file was uploaded")
    p = Path(path)
    name = p.name or "upload"
    try:
        real = p.resolve(strict=True)
    except (OSError, RuntimeError):
        raise UploadError(f"{name}: the uploaded file is gone; upload it again") from None
    if upload_root is not None:
        root = Path(upload_root).resolve()
        if not real.is_relative_to(root):
            raise UploadError(f"{name}: refused, the file is not an upload")
    st = real.stat()
    if not stat.S_ISREG(st.st_mode):
        raise UploadError(f"{name}: not a regular file")
    if st.st_size > max_bytes:
        raise UploadError(f"{name}: {st.st_size} bytes is over the upload limit of {max_bytes} bytes")
    with open(real, "rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise UploadError(f"{name}: over the upload limit of {max_bytes} bytes")
    if not data:
        raise UploadError(f"{name}: the file is empty")
    return decode_image(data, name=name, max_pixels=max_pixels)


class UploadStore:
    """Checked images kept in `<store>.uploads/`, named by the hash of their pixels."""

    def __init__(self, store_path: str | os.PathLike) -> None:
        from refcoco_edit.store import BlobStore

        self.root = Path(f"{store_path}.uploads")
        self.blobs = BlobStore(self.root)
        self.blobs.ensure()

    def put(self, image: Any) -> str:
        return self.blobs.put(to_rgb(image))

    def get(self, digest: str):
        from refcoco_edit.errors import DataError

        try:
            return self.blobs.get(digest)
        except DataError:
            raise UploadError("the example image is no longer stored; upload it again") from None

    def add_file(self, path: str | os.PathLike, *, upload_root: str | os.PathLike | None,
                 max_bytes: int = MAX_UPLOAD_BYTES, max_pixels: int = MAX_UPLOAD_PIXELS) -> tuple[str, Any]:
        """Check an uploaded file, store it; (hash, RGB image)."""
        image = read_upload(path, upload_root=upload_root, max_bytes=max_bytes, max_pixels=max_pixels)
        return self.put(image), image


# ---------------------------------------------------------------------- the upload route's guard
class QuotaExceeded(UploadError):
    """An upload would take its user over the quota (`UploadLimits.quota_bytes` / `quota_files`)."""


@dataclass
class _Kept:
    path: Path
    size: int
    at: float


class UploadQuota:
    """Each user's uploads within `limits.keep_s` (what counts toward the quota), and requests under
    way; an upload past `keep_s` is deleted (unless a newer upload of the same content still counts)."""

    def __init__(self, limits: UploadLimits = LIMITS, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self._clock = clock
        self._kept: dict[str, deque[_Kept]] = {}
        self._pending: dict[str, list[int]] = {}  # user -> [reserved bytes, requests]
        self._lock = threading.Lock()

    def usage(self, user: str) -> tuple[int, int]:
        """(bytes, files) the user's live uploads hold, requests under way included."""
        with self._lock:
            return self._usage(user)

    def _usage(self, user: str) -> tuple[int, int]:
        kept = self._kept.get(user, ())
        pending = self._pending.get(user, [0, 0])
        return sum(k.size for k in kept) + pending[0], len(kept) + pending[1]

    def _refusal(self, nbytes: int, nfiles: int, used_bytes: int, used_files: int) -> str | None:
        lim = self.limits
        hours = f"{lim.keep_s / 3600:g} h"
        if used_files + nfiles > lim.quota_files:
            return (f"upload refused: over your quota of {lim.quota_files} files per {hours} "
                    f"({used_files} kept); try again later")
        if used_bytes + nbytes > lim.quota_bytes:
            return (f"upload refused: {nbytes} more bytes would be over your quota of {lim.quota_bytes} bytes "
                    f"per {hours} ({used_bytes} used); try again later")
        return None

    def reserve(self, user: str, nbytes: int) -> None:
        """Hold `nbytes` and one file for a request under way; UploadError when that is over the quota."""
        with self._lock:
            why = self._refusal(nbytes, 1, *self._usage(user))
            if why is not None:
                raise QuotaExceeded(why)
            pending = self._pending.setdefault(user, [0, 0])
            pending[0] += nbytes
            pending[1] += 1

    def release(self, user: str, nbytes: int) -> None:
        """End a reservation (the request is done, kept or refused)."""
        with self._lock:
            pending = self._pending.get(user)
            if pending is not None:
                pending[0] -= nbytes
                pending[1] -= 1
                if pending[1] <= 0:
                    del self._pending[user]

    def keep(self, user: str, reserved: int, files: list[tuple[Path, int]]) -> None:
        """Turn a reservation into kept uploads; UploadError (nothing kept) when they are over the quota."""
        with self._lock:
            used_bytes, used_files = self._usage(user)
            why = self._refusal(sum(n for _, n in files), len(files), used_bytes - reserved, used_files - 1)
            if why is not None:
                raise QuotaExceeded(why)
            now = self._clock()
            self._kept.setdefault(user, deque()).extend(_Kept(Path(p), n, now) for p, n in files)

    def holds(self, path: Path) -> bool:
        """Whether a live upload (of anyone) is this file."""
        with self._lock:
            return any(k.path == path for kept in self._kept.values() for k in kept)

    def expire(self) -> list[Path]:
        """Forget uploads older than `keep_s` and delete their files; the files deleted."""
        cutoff = self._clock() - self.limits.keep_s
        with self._lock:
            old: list[Path] = []
            for user in list(self._kept):
                kept = self._kept[user]
                while kept and kept[0].at <= cutoff:
                    old.append(kept.popleft().path)
                if not kept:
                    del self._kept[user]
            live = {k.path for kept in self._kept.values() for k in kept}
        gone = [p for p in dict.fromkeys(old) if p not in live]
        for p in gone:
            remove_upload(p)
        return gone


def remove_upload(path: Path) -> None:
    """Delete an uploaded file and the folder Gradio made for it, when that is left empty."""
    try:
        path.unlink(missing_ok=True)
        path.parent.rmdir()
    except OSError:
        pass


def check_stored_upload(path: Path, limits: UploadLimits = LIMITS) -> int:
    """The size of a file Gradio stored, once `open_image` has opened it as a PNG, JPEG or WebP
    within the pixel limit; UploadError naming the file otherwise."""
    from refcoco_edit.errors import DataError
    from refcoco_edit.imaging.files import open_image

    name = path.name or "upload"
    size = path.stat().st_size
    if size > limits.max_bytes:
        raise UploadError(f"{name}: {size} bytes is over the upload limit of {limits.max_bytes} bytes")
    try:
        open_image(path, what=name, mode=None, max_pixels=limits.max_pixels, formats=list(FORMATS)).close()
    except DataError as exc:
        raise UploadError(f"{exc} (uploads must be PNG, JPEG or WebP images)") from None
    return size


def _user_of(scope: dict) -> str | None:
    """The signed-in user of a request to a Gradio app, from its session cookie (as Gradio finds it)."""
    from starlette.requests import cookie_parser

    app = scope.get("app")
    tokens, cookie_id = getattr(app, "tokens", None), getattr(app, "cookie_id", None)
    if tokens is None:
        return None
    header = next((v for k, v in scope.get("headers", []) if k == b"cookie"), b"")
    cookies = cookie_parser(header.decode("latin-1"))
    token = cookies.get(f"access-token-{cookie_id}") or cookies.get(f"access-token-unsecure-{cookie_id}")
    return tokens.get(token) if token else None


async def _refuse(send: Callable, status: int, message: str) -> None:
    body = message.encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class UploadGuard:
    """ASGI middleware in front of Gradio's upload route (see the module docstring): the user's
    quota before anything is stored, then only images `open_image` can open are kept."""

    def __init__(self, app: Callable, *, limits: UploadLimits = LIMITS, quota: UploadQuota | None = None) -> None:
        self.app = app
        self.limits = limits
        self.quota = quota if quota is not None else UploadQuota(limits)

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        path = str(scope.get("path", "")).rstrip("/")
        if scope.get("type") != "http" or scope.get("method") != "POST" or not path.endswith("/gradio_api/upload"):
            await self.app(scope, receive, send)
            return
        user = _user_of(scope)
        if user is None:  # not signed in: Gradio refuses it
            await self.app(scope, receive, send)
            return
        self.quota.expire()
        length = next((v for k, v in scope.get("headers", []) if k == b"content-length"), None)
        if length is None or not length.isdigit():
            await _refuse(send, 411, "an upload must say its size (Content-Length)")
            return
        nbytes = int(length)
        try:
            self.quota.reserve(user, nbytes)
        except UploadError as exc:
            log.info("upload by %s refused: %s", user, exc)
            await _refuse(send, 413, str(exc))
            return
        try:
            messages: list[dict] = []

            async def hold(message: dict) -> None:
                messages.append(message)

            await self.app(scope, receive, hold)
            refusal = await self._check(user, nbytes, messages)
        finally:
            self.quota.release(user, nbytes)
        if refusal is not None:
            log.info("upload by %s refused: %s", user, refusal[1])
            await _refuse(send, *refusal)
            return
        for message in messages:
            await send(message)

    async def _check(self, user: str, nbytes: int, messages: list[dict]) -> tuple[int, str] | None:
        """Check the files a successful upload stored (kept or deleted); a refusal (status, text) or None."""
        from starlette.concurrency import run_in_threadpool

        start = next((m for m in messages if m["type"] == "http.response.start"), None)
        if start is None or start["status"] != 200:
            return None
        try:
            stored = [Path(p) for p in json.loads(b"".join(m.get("body", b"") for m in messages[1:]))]
        except (ValueError, TypeError):
            return 500, "upload refused: the server's answer could not be read"
        try:
            sizes = [await run_in_threadpool(check_stored_upload, p, self.limits) for p in stored]
            self.quota.keep(user, nbytes, list(zip(stored, sizes, strict=True)))
        except (UploadError, OSError) as exc:
            for p in stored:
                if not self.quota.holds(p):
                    remove_upload(p)
            status = 413 if isinstance(exc, QuotaExceeded) else 415
            return status, str(exc) if isinstance(exc, UploadError) else f"upload refused: {exc}"
        return None
