"""RefShapes at the study's resolution, and a cache of VAE latents.

The study trains on a RefShapes RefCOCO written by `refcoco-edit sample` (256 x 192 images, exact
reference edits in `edits.json`). Its models run at half that size, 128 x 96: the aspect ratio is kept
(no stretching of shapes, no cropped objects) and a 2-core CPU can train a UNet on it. Pixels are
box-averaged (an exact 2 x 2 mean, since the sizes divide), the object mask M is area-averaged (a soft
target, as `referdiffusion.train.data` does) and the edit mask M_e uses the "any" rule (a pixel is
edited when any source pixel under it is), so the background outside M_e is untouched at both sizes.

Roles of RefShapes' four splits: `train` trains, `val` selects, `testA` is the study's test split (read by
the final evaluation only) and `testB` is kept in reserve. Data lives outside the repository and is
rebuilt byte for byte from its seed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from refcoco_edit.errors import DataError, InputError
from refcoco_edit.imaging.files import open_image
from refcoco_edit.io import atomic_path, atomic_write_json
from refcoco_edit.refer.reader import RefCOCO, decode_segmentation

if TYPE_CHECKING:
    import torch
    from diffusers import AutoencoderKL

    from refcoco_edit.text.prompts import Prompt

log = logging.getLogger(__name__)

WIDTH = 128
HEIGHT = 96
# study role -> RefShapes split
SPLITS: dict[str, str] = {"train": "train", "val": "val", "test": "testA", "reserve": "testB"}
DATASET = "refshapes"
SPLIT_BY = "unc"


def study_split(role: str) -> str:
    """The RefShapes split that plays `role` (train, val, test, reserve)."""
    if role not in SPLITS:
        raise InputError(f"unknown study split {role!r}; known: {', '.join(SPLITS)}")
    return SPLITS[role]


# ---------------------------------------------------------------------------- resizing
def _factors(height: int, width: int, out_hw: tuple[int, int]) -> tuple[int, int]:
    oh, ow = out_hw
    if oh < 1 or ow < 1 or height % oh or width % ow:
        raise InputError(f"cannot box-resize {width}x{height} to {ow}x{oh}: the sizes must divide")
    return height // oh, width // ow


def downsample_image(image: np.ndarray, out_hw: tuple[int, int] = (HEIGHT, WIDTH)) -> np.ndarray:
    """H x W x C uint8 -> the mean of each block, rounded, uint8 (an exact box filter)."""
    fh, fw = _factors(image.shape[0], image.shape[1], out_hw)
    blocks = image.reshape(out_hw[0], fh, out_hw[1], fw, -1).astype(np.float64)
    return np.rint(blocks.mean(axis=(1, 3))).astype(np.uint8)


def downsample_mask_area(mask: np.ndarray, out_hw: tuple[int, int] = (HEIGHT, WIDTH)) -> np.ndarray:
    """H x W 0/1 mask -> float32 share of each block that the mask covers (the soft target for M)."""
    fh, fw = _factors(mask.shape[0], mask.shape[1], out_hw)
    return (mask.reshape(out_hw[0], fh, out_hw[1], fw) > 0).mean(axis=(1, 3)).astype(np.float32)


def downsample_mask_any(mask: np.ndarray, out_hw: tuple[int, int] = (HEIGHT, WIDTH)) -> np.ndarray:
    """H x W 0/1 mask -> bool, True where any pixel of the block is set (the rule for M_e)."""
    fh, fw = _factors(mask.shape[0], mask.shape[1], out_hw)
    return (mask.reshape(out_hw[0], fh, out_hw[1], fw) > 0).any(axis=(1, 3))


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """N x H x W x 3 (or H x W x 3) uint8 -> float N x 3 x H x W in [-1, 1], the VAE's input range."""
    import torch

    arr = np.asarray(images)
    if arr.dtype != np.uint8 or arr.shape[-1] != 3:
        raise InputError(f"expected uint8 images with 3 channels last, got {arr.dtype} {arr.shape}")
    t = torch.from_numpy(np.ascontiguousarray(arr)).float().div(127.5).sub(1.0)
    return t.permute(0, 3, 1, 2) if t.ndim == 4 else t.permute(2, 0, 1)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """The inverse of `to_tensor`: N x 3 x H x W in [-1, 1] -> N x H x W x 3 uint8, clipped and rounded."""
    x = ((images.detach().float().clamp(-1, 1) + 1.0) * 127.5).round()
    return x.permute(0, 2, 3, 1).cpu().numpy().astype(np.uint8)


# ---------------------------------------------------------------------------- the dataset
@dataclass(frozen=True)
class EditRecord:
    """One reference edit of one referred object, with everything a study step needs to find its files."""

    edit_id: int
    ref_id: int
    ann_id: int
    image_id: int
    split: str
    edit_type: str  # replace, remove, attribute
    target: str
    sentences: tuple[str, ...]
    edited_file: str  # relative to the dataset folder


class RefShapesStudy:
    """A RefShapes RefCOCO (`refcoco-edit sample` output) read for the study, at 128 x 96.

    `root` is the sample's output folder (REFER's data_root). Everything is read from the files
    the generator wrote: REFER refs and instances through `RefCOCO`, edits from `edits.json`.
    """

    def __init__(self, root: Path | str, size: tuple[int, int] = (HEIGHT, WIDTH)) -> None:
        self.root = Path(root)
        self.size = size
        self.refer = RefCOCO.load(self.root, DATASET, SPLIT_BY)
        self.dataset_dir = self.root / DATASET
        path = self.dataset_dir / "edits.json"
        if not path.is_file():
            raise DataError(f"{path} not found: is {self.root} a RefShapes folder written with images "
                            "(`refcoco-edit sample --out ROOT`)?")
        meta = json.loads(path.read_text())
        w, h = meta.get("image_size", (0, 0))
        _factors(int(h), int(w), size)
        self.source_hw = (int(h), int(w))
        self.seed = meta.get("seed")
        self._edit_masks: dict[int, dict] = {}
        records = []
        for e in meta["edits"]:
            if not e.get("edited_file"):
                raise DataError(f"{path}: edit {e.get('edit_id')} has no edited image (written with --no-images)")
            ref = self.refer.ref(int(e["ref_id"]))
            sentences = tuple(" ".join(str(s.get("sent") or s.get("raw") or "").split())
                              for s in ref.get("sentences", []))
            records.append(EditRecord(int(e["edit_id"]), int(e["ref_id"]), int(e["ann_id"]), int(e["image_id"]),
                                      str(ref["split"]), str(e["edit_type"]), str(e.get("target") or ""),
                                      tuple(s for s in sentences if s), str(e["edited_file"])))
            self._edit_masks[int(e["edit_id"])] = e["edit_mask"]
        self.records = records
        self._by_id = {r.edit_id: r for r in records}

    # ------------------------------------------------------------------ listing
    def edits(self, role: str) -> list[EditRecord]:
        """The edits of the split that plays `role`, in edit-id order."""
        split = study_split(role)
        return [r for r in self.records if r.split == split]

    def image_ids(self, role: str) -> list[int]:
        """Ids of the source images of the split that plays `role` (images that have a referred object)."""
        split = study_split(role)
        return sorted({r.image_id for r in self.records if r.split == split})

    def edit(self, edit_id: int) -> EditRecord:
        try:
            return self._by_id[int(edit_id)]
        except KeyError:
            raise InputError(f"no edit {edit_id} in {self.dataset_dir}") from None

    def counts(self) -> dict[str, dict[str, int]]:
        """Images and edits per study role."""
        return {role: {"images": len(self.image_ids(role)), "edits": len(self.edits(role))} for role in SPLITS}

    # ------------------------------------------------------------------ pixels
    def source(self, image_id: int) -> np.ndarray:
        """The source image at the study's size, H x W x 3 uint8."""
        return self._load(self.refer.image_path(int(image_id)))

    def edited(self, record: EditRecord) -> np.ndarray:
        """The reference edit at the study's size, H x W x 3 uint8."""
        return self._load(self.dataset_dir / record.edited_file)

    def _load(self, path: Path) -> np.ndarray:
        with open_image(path) as im:
            arr = np.asarray(im)
        if arr.shape[:2] != self.source_hw:
            raise DataError(f"{path}: {arr.shape[1]}x{arr.shape[0]} pixels, expected "
                            f"{self.source_hw[1]}x{self.source_hw[0]}")
        return downsample_image(arr, self.size)

    def object_mask(self, record: EditRecord) -> np.ndarray:
        """M: the referred object's share of each pixel, float32 H x W in [0, 1]."""
        return downsample_mask_area(self.refer.ann_mask(record.ann_id), self.size)

    def edit_mask(self, record: EditRecord) -> np.ndarray:
        """M_e: True where the reference edit may change a pixel, bool H x W."""
        full = decode_segmentation(self._edit_masks[record.edit_id], *self.source_hw, what=f"edit {record.edit_id}")
        return downsample_mask_any(full, self.size)

    def prompt(self, record: EditRecord, seed: int = 0) -> Prompt:
        """An editing prompt for the edit: a sentence and a template drawn from (seed, edit id)."""
        from refcoco_edit.text.prompts import compose

        rng = random.Random(f"{seed}:{record.edit_id}")
        return compose(self._sentence(record, rng), record.edit_type, record.target or None, rng=rng)

    def sentence(self, record: EditRecord, seed: int = 0) -> str:
        """The referring expression `prompt(record, seed)` is made from."""
        return self._sentence(record, random.Random(f"{seed}:{record.edit_id}"))

    @staticmethod
    def _sentence(record: EditRecord, rng: random.Random) -> str:
        if not record.sentences:
            raise DataError(f"edit {record.edit_id}: ref {record.ref_id} has no referring expression")
        return rng.choice(record.sentences)

    def images(self, role: str, limit: int | None = None, with_edits: bool = False,
               seed: int = 0) -> np.ndarray:
        """N x H x W x 3 uint8: the role's source images (and, with `with_edits`, its edited images too).

        `limit` keeps a random subset of that size, drawn with `seed`, so a fixed evaluation set stays fixed.
        """
        items: list[tuple[str, int]] = [("source", i) for i in self.image_ids(role)]
        if with_edits:
            items += [("edit", r.edit_id) for r in self.edits(role)]
        if limit is not None and limit < len(items):
            keep = np.random.default_rng(seed).choice(len(items), size=limit, replace=False)
            items = [items[k] for k in sorted(keep)]
        out = np.empty((len(items), *self.size, 3), dtype=np.uint8)
        for k, (kind, key) in enumerate(items):
            out[k] = self.source(key) if kind == "source" else self.edited(self.edit(key))
        return out


def batches(n: int, batch_size: int) -> Iterator[slice]:
    """Consecutive slices of range(n), the last one possibly shorter."""
    if batch_size < 1:
        raise InputError(f"batch size must be positive, got {batch_size}")
    for start in range(0, n, batch_size):
        yield slice(start, min(n, start + batch_size))


# ---------------------------------------------------------------------------- latent cache
def _fingerprint(vae: AutoencoderKL) -> str:
    """A hash of the VAE's weights and config: a cache built by another VAE is never reused."""
    h = hashlib.sha256(json.dumps(dict(vae.config), sort_keys=True, default=str).encode())
    for name, tensor in sorted(vae.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().float().numpy().tobytes())
    return h.hexdigest()[:16]


@dataclass
class LatentCache:
    """Scaled latent means (latent_dist.mean x scaling_factor), float16, of a split's sources and edits.

    The VAE is trained with a tiny KL weight, so its posterior is nearly a point and the mean stands for
    a sample; encoding once saves the VAE's encoder from every training step of every row.
    """

    source_ids: np.ndarray  # image ids, sorted
    source: np.ndarray  # N_images x C x h x w
    edit_ids: np.ndarray  # edit ids, sorted
    edited: np.ndarray  # N_edits x C x h x w
    fingerprint: str

    def source_of(self, image_id: int) -> np.ndarray:
        k = int(np.searchsorted(self.source_ids, image_id))
        if k >= len(self.source_ids) or self.source_ids[k] != image_id:
            raise InputError(f"image {image_id} is not in the latent cache")
        return self.source[k]

    def edited_of(self, edit_id: int) -> np.ndarray:
        k = int(np.searchsorted(self.edit_ids, edit_id))
        if k >= len(self.edit_ids) or self.edit_ids[k] != edit_id:
            raise InputError(f"edit {edit_id} is not in the latent cache")
        return self.edited[k]


def encode_images(vae: AutoencoderKL, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """N x H x W x 3 uint8 -> N x C x h x w float32 scaled latent means."""
    import torch

    scale = float(vae.config.scaling_factor)
    out = []
    with torch.no_grad():
        for sl in batches(len(images), batch_size):
            out.append((vae.encode(to_tensor(images[sl])).latent_dist.mean * scale).float().numpy())
    return np.concatenate(out) if out else np.zeros((0,), np.float32)


def build_latent_cache(study: RefShapesStudy, vae: AutoencoderKL, role: str, out_dir: Path | str,
                       batch_size: int = 32, progress: bool = False) -> Path:
    """Encode the role's sources and edits into `<out_dir>/<role>.npz` (skipped when the same VAE built it)."""
    out = Path(out_dir) / f"{role}.npz"
    fp = _fingerprint(vae)
    if out.is_file():
        with np.load(out) as z:
            if str(z["fingerprint"]) == fp:
                log.info("latent cache %s is up to date", out)
                return out
    image_ids = np.array(study.image_ids(role), dtype=np.int64)
    records = study.edits(role)
    edit_ids = np.array([r.edit_id for r in records], dtype=np.int64)
    steps: Sequence[tuple[str, int]] = [("source", int(i)) for i in image_ids] + [("edit", int(e)) for e in edit_ids]
    lat: list[np.ndarray] = []
    chunk = max(batch_size, 256)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(steps), desc=f"latents {role}", unit="image")
    for sl in batches(len(steps), chunk):
        imgs = np.stack([study.source(k) if kind == "source" else study.edited(study.edit(k))
                         for kind, k in steps[sl]])
        lat.append(encode_images(vae, imgs, batch_size).astype(np.float16))
        if bar is not None:
            bar.update(len(imgs))
    if bar is not None:
        bar.close()
    allz = np.concatenate(lat)
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, source_ids=image_ids, source=allz[: len(image_ids)], edit_ids=edit_ids,
                     edited=allz[len(image_ids):], fingerprint=np.array(fp))
    atomic_write_json(out.with_suffix(".json"), {"role": role, "split": study_split(role), "images": len(image_ids),
                                                 "edits": len(edit_ids), "shape": list(allz.shape[1:]),
                                                 "fingerprint": fp})
    return out


def load_latent_cache(path: Path | str, vae: AutoencoderKL | None = None) -> LatentCache:
    """Read a cache; with `vae`, refuse one that another VAE built."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"latent cache not found: {path}")
    with np.load(path) as z:
        cache = LatentCache(z["source_ids"], z["source"], z["edit_ids"], z["edited"], str(z["fingerprint"]))
    if vae is not None and cache.fingerprint != _fingerprint(vae):
        raise DataError(f"{path} was built by another VAE; rebuild it")
    return cache


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m referdiffusion.study.data",
                                description="RefShapes study data: split sizes and the latent cache")
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("counts", help="images and edits per study split")
    c.add_argument("--data", type=Path, required=True)
    k = sub.add_parser("cache", help="encode sources and edits with a VAE (train and val; test is read only "
                                     "by the final evaluation)")
    k.add_argument("--data", type=Path, required=True)
    k.add_argument("--vae", type=Path, required=True, help="AutoencoderKL folder (refshapes-vae)")
    k.add_argument("--out", type=Path, required=True)
    k.add_argument("--roles", nargs="+", default=["train", "val"], choices=["train", "val"])
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    study = RefShapesStudy(args.data)
    if args.cmd == "counts":
        print(json.dumps(study.counts()))
        return 0
    import torch
    from diffusers import AutoencoderKL

    torch.set_num_threads(1)
    vae = AutoencoderKL.from_pretrained(args.vae).float().eval()
    for role in args.roles:
        print(build_latent_cache(study, vae, role, args.out, progress=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
