"""Content-addressed image files beside the database: `<db>.blobs/ab/<sha256>.png`.

The name is the SHA-256 of the *decoded pixels*, not of the PNG bytes:
`sha256(f"{mode} {width}x{height}\\n".encode() + image.tobytes())`. So the same picture has the same
name whatever PNG encoder or compression level wrote it, and `verify` can check a file against its
name after decoding it. Files are PNG (lossless), written once: to a temporary file under
`<db>.blobs/tmp/` (same file system), then `os.replace`d to their final name, so a reader never sees
a half-written image and a killed writer leaves at most a stray temporary file, which nothing reads
and `clean_temp` removes.
"""

from __future__ import annotations

import hashlib
import io
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from refcoco_edit.errors import DataError, InputError
from refcoco_edit.io import atomic_path

log = logging.getLogger(__name__)

# Modes stored as they are; anything else (P, 1, CMYK, I;16 ...) is converted to RGB or RGBA first,
# so that the hash of the raw pixels describes the whole picture (a palette is not in tobytes()).
KEPT_MODES = ("RGB", "RGBA", "L")


def _as_image(image: Any):
    from PIL import Image

    if isinstance(image, Image.Image):
        im = image
    else:
        import numpy as np

        if not isinstance(image, np.ndarray):
            raise InputError(f"an image must be a PIL image or a uint8 array, got {type(image).__name__}")
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise InputError(f"an image array must be uint8 (H, W) or (H, W, C), got {image.dtype} {image.shape}")
        im = Image.fromarray(image)
    if im.mode not in KEPT_MODES:
        alpha = "A" in im.getbands() or "transparency" in im.info
        im = im.convert("RGBA" if alpha else "RGB")
    return im


def pixel_hash(image: Any) -> str:
    """The content name of an image: SHA-256 of its mode, size and raw pixels."""
    im = _as_image(image)
    w, h = im.size
    digest = hashlib.sha256(f"{im.mode} {w}x{h}\n".encode("ascii"))
    digest.update(im.tobytes())
    return digest.hexdigest()


class BlobStore:
    """The image folder of one store; safe for several processes writing at once."""

    def __init__(self, root: Path, *, durable: bool = False) -> None:
        self.root = Path(root)
        self.tmp = self.root / "tmp"
        self.durable = durable

    def ensure(self) -> None:
        self.tmp.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise DataError(f"not a blob hash: {digest!r}")
        return self.root / digest[:2] / f"{digest}.png"

    def put(self, image: Any) -> str:
        """Store `image` (once) and return its hash; the file exists when this returns."""
        im = _as_image(image)
        digest = pixel_hash(im)
        if not self.path(digest).exists():
            buf = io.BytesIO()
            im.save(buf, format="PNG")
            self._write(digest, buf.getvalue())
        return digest

    def put_png(self, digest: str, data: bytes) -> None:
        """Store PNG bytes under `digest` after checking that their pixels match the name (restores)."""
        from refcoco_edit.imaging.files import open_image

        if self.path(digest).exists():
            return
        with open_image(data, what=f"blob {digest[:12]}", mode=None, formats=["PNG"]) as im:
            actual = pixel_hash(im)
        if actual != digest:
            raise DataError(f"blob {digest[:12]}: its pixels hash to {actual[:12]}, not to its name")
        self._write(digest, data)

    def _write(self, digest: str, data: bytes) -> None:
        with atomic_path(self.path(digest), tmp_dir=self.tmp, durable=self.durable) as tmp:
            tmp.write_bytes(data)

    def read_bytes(self, digest: str) -> bytes:
        p = self.path(digest)
        try:
            return p.read_bytes()
        except FileNotFoundError:
            raise DataError(f"image blob missing: {p}") from None

    def get(self, digest: str):
        """The stored image as a loaded PIL image (same mode, same pixels as put)."""
        from refcoco_edit.imaging.files import open_image

        return open_image(self.read_bytes(digest), what=f"image blob {self.path(digest)}", mode=None)

    def exists(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def verify(self, digest: str) -> bool:
        """True when the file decodes to pixels whose hash is its name."""
        try:
            return pixel_hash(self.get(digest)) == digest
        except DataError:
            return False

    def all_hashes(self) -> Iterator[str]:
        if not self.root.is_dir():
            return
        for shard in sorted(self.root.iterdir()):
            if shard.is_dir() and len(shard.name) == 2:
                for f in sorted(shard.glob("*.png")):
                    yield f.stem

    def clean_temp(self, max_age_s: float = 3600.0) -> int:
        """Remove temporary files older than `max_age_s` (left by killed writers); the count removed."""
        if not self.tmp.is_dir():
            return 0
        removed = 0
        now = time.time()
        for f in self.tmp.iterdir():
            try:
                if now - f.stat().st_mtime >= max_age_s:
                    f.unlink()
                    removed += 1
            except FileNotFoundError:  # another process finished or removed it
                continue
        if removed:
            log.info("removed %d stray temporary blob file(s) from %s", removed, self.tmp)
        return removed

