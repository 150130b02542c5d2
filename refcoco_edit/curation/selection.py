"""Which refs make good RefCOCO-Edit source objects: the dataset's two rules, measured.

Rule 1, *not the sole prominent subject*: editing the one thing a photo is about needs no referring
expression. Measured by the object's area share of the image, how many other objects of note the
image holds, and how central (and how large relative to the rest) the object is.

Rule 2, *a similar object exists*: the expression must be needed to pick the object out. Another
object is similar when it has the same category, or looks alike: its colour histogram (joint RGB
histogram over the mask's pixels, compared by histogram intersection) is close and, weighted
in, so are its mask shape descriptors (extent, solidity, circularity, aspect ratio); optionally
also when CLIP image features of the two object crops are close (`clip_model`, off by default).

Everything geometric is vectorised over all refs at once: the (ref, other object of its image)
pairs are built with numpy index arithmetic, and counts come from `bincount`. Appearance needs the
image: each image is read at most once, and when its file is missing (the full-size synthetic set
has no images) appearance is skipped and the reasons say so; the category test still runs.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from refcoco_edit.errors import DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SelectionThresholds:
    """Thresholds of the two rules. Defaults, and why:

    - max_area_share 0.5: an object covering half the picture *is* the picture.
    - subject_area_share 0.2 with subject_centrality 0.7: the largest object of an image, a fifth
      of it or more and near the centre (centrality 1 at the centre, 0 in a corner), is what the
      photographer framed; COCO's "large" objects start near 10% of a 640x480 image, so 20% is
      clearly dominant.
    - note_min_share 0.002 and note_min_relative 0.1: another object counts as "of note" when it
      covers at least 0.2% of the image (about 25x25 pixels in a 640x480 COCO image, below COCO's
      "small" limit of 32x32) and at least a tenth of the source object's area; specks beside a
      large object do not compete for attention.
    - colour_threshold 0.5: histogram intersection of the two objects' colour distributions; half
      of the colour mass shared is where two objects start to read as "the same colour".
    - appearance_threshold 0.6 with colour_weight 0.7: the combined score weighs colour over
      shape, since shape descriptors of unrelated objects agree often (a square and a diamond
      have the same solidity), colour much less.
    - clip_threshold 0.9: cosine of CLIP image embeddings of two crops; different instances of
      one kind of thing score around 0.8-0.9 with ViT models, unrelated things lower.
    - histogram_bins 4 per channel: 64 joint bins, coarse enough that lighting and JPEG noise
      stay within a bin, fine enough to separate the basic colour names.
    """

    max_area_share: float = 0.5
    subject_area_share: float = 0.2
    subject_centrality: float = 0.7
    note_min_share: float = 0.002
    note_min_relative: float = 0.1
    colour_threshold: float = 0.5
    appearance_threshold: float = 0.6
    colour_weight: float = 0.7
    clip_threshold: float = 0.9
    histogram_bins: int = 4


@dataclass
class Candidate:
    """One ref judged by the two rules, with the measured values and readable reasons."""

    ref_id: int
    ann_id: int
    image_id: int
    category: str
    eligible: bool
    not_sole_subject: bool  # rule 1
    has_similar: bool  # rule 2
    measures: dict[str, Any]
    reasons: list[str]
    similar_anns: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------------ appearance features


def colour_histogram(pixels: np.ndarray, bins: int = 4) -> np.ndarray:
    """Joint RGB histogram (bins**3), L1-normalised, of an (N, 3) uint8 pixel array; zeros when empty."""
    q = (pixels.astype(np.int64) * bins) // 256
    idx = (q[:, 0] * bins + q[:, 1]) * bins + q[:, 2]
    h = np.bincount(idx, minlength=bins**3).astype(np.float64)
    total = h.sum()
    return h / total if total else h


def histogram_intersection(h1: np.ndarray, h2: np.ndarray) -> np.ndarray:
    """sum(min(h1, h2)) along the last axis: 1 for equal distributions, 0 for disjoint ones."""
    return np.minimum(h1, h2).sum(axis=-1)


def shape_descriptors(mask: np.ndarray) -> np.ndarray:
    """[extent, solidity, circularity, aspect] of a binary mask, each in [0, 1]; NaN when empty.

    extent = area / bounding-box area; solidity = area / convex-hull area; circularity =
    4*pi*area / perimeter**2; aspect = short side / long side of the bounding box.
    """
    import cv2

    m = np.ascontiguousarray(mask, dtype=np.uint8)
    area = float(m.sum())
    if area == 0:
        return np.full(4, np.nan)
    contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    points = np.vstack(contours)
    x, y, w, h = cv2.boundingRect(points)
    hull_area = max(float(cv2.contourArea(cv2.convexHull(points))), 1.0)
    perimeter = max(sum(float(cv2.arcLength(c, True)) for c in contours), 1.0)
    return np.array([
        min(area / (w * h), 1.0),
        min(area / hull_area, 1.0),
        min(4.0 * math.pi * area / perimeter**2, 1.0),
        min(w, h) / max(w, h),
    ])


def shape_similarity(d1: np.ndarray, d2: np.ndarray) -> np.ndarray:
    """1 - mean absolute difference of shape descriptors (along the last axis); NaN stays NaN."""
    return 1.0 - np.abs(d1 - d2).mean(axis=-1)


# ------------------------------------------------------------------------------ the column view


@dataclass
class _Columns:
    """Per-annotation arrays, sorted by image so that an image's annotations are contiguous."""

    ann_ids: np.ndarray
    image_ids: np.ndarray
    cat_ids: np.ndarray
    area: np.ndarray
    cx: np.ndarray
    cy: np.ndarray
    img_w: np.ndarray
    img_h: np.ndarray
    start: np.ndarray  # start of the annotation's image group
    count: np.ndarray  # size of that group
    pos_of: dict[int, int]  # ann id -> position


def _columns(data) -> _Columns:
    anns = data.anns
    n = len(anns)
    ann_ids = np.fromiter((a["id"] for a in anns), np.int64, n)
    image_ids = np.fromiter((a["image_id"] for a in anns), np.int64, n)
    cat_ids = np.fromiter((a["category_id"] for a in anns), np.int64, n)
    bbox = np.array([a.get("bbox") or (0.0, 0.0, 0.0, 0.0) for a in anns], dtype=np.float64).reshape(n, 4)
    area = np.fromiter((a["area"] if a.get("area") is not None else -1.0 for a in anns), np.float64, n)
    area = np.where(area >= 0, area, bbox[:, 2] * bbox[:, 3])
    sizes = {int(im["id"]): (float(im["width"]), float(im["height"])) for im in data.images}
    wh = np.array([sizes[i] for i in image_ids.tolist()], dtype=np.float64).reshape(n, 2)
    order = np.argsort(image_ids, kind="stable")
    image_ids = image_ids[order]
    _, first, counts = np.unique(image_ids, return_index=True, return_counts=True)
    group = np.repeat(np.arange(len(first)), counts)
    cols = _Columns(
        ann_ids=ann_ids[order], image_ids=image_ids, cat_ids=cat_ids[order], area=area[order],
        cx=(bbox[:, 0] + bbox[:, 2] / 2)[order], cy=(bbox[:, 1] + bbox[:, 3] / 2)[order],
        img_w=wh[order, 0], img_h=wh[order, 1], start=first[group], count=counts[group], pos_of={},
    )
    cols.pos_of = dict(zip(cols.ann_ids.tolist(), range(n)))
    return cols


# ------------------------------------------------------------------------------ selection


@dataclass
class _Appearance:
    colour: np.ndarray  # per pair, NaN where not measured
    shape: np.ndarray
    clip: np.ndarray
    measured: np.ndarray  # per ref: appearance measured
    note: list[str | None]  # per ref: why not measured


def select_candidates(
    data,
    ref_ids: Sequence[int] | None = None,
    thresholds: SelectionThresholds | None = None,
    *,
    use_images: bool = True,
    clip_model: str | None = None,
    model_overrides: dict[str, str] | None = None,
    progress: bool = False,
) -> list[Candidate]:
    """Judge every ref (or `ref_ids`) of a `RefCOCO` by the two rules; one `Candidate` per ref, in order."""
    th = thresholds or SelectionThresholds()
    ids = list(data.ref_ids()) if ref_ids is None else [int(r) for r in ref_ids]
    if not ids:
        return []
    cols = _columns(data)
    refs = [data.ref(r) for r in ids]
    sel = np.array([cols.pos_of[int(r["ann_id"])] for r in refs], dtype=np.int64)
    R = len(sel)

    # --- pairs (ref, other annotation of the same image), grouped by ref
    n_i = cols.count[sel]
    total = int(n_i.sum())
    ref_of_pair = np.repeat(np.arange(R), n_i)
    offsets = np.cumsum(n_i) - n_i
    other = np.repeat(cols.start[sel], n_i) + (np.arange(total) - np.repeat(offsets, n_i))
    keep = other != sel[ref_of_pair]
    ref_of_pair, other = ref_of_pair[keep], other[keep]
    src = sel[ref_of_pair]

    # --- rule 1
    img_area = cols.img_w[sel] * cols.img_h[sel]
    area_share = cols.area[sel] / img_area
    half_diag = np.hypot(cols.img_w[sel], cols.img_h[sel]) / 2
    dist = np.hypot(cols.cx[sel] - cols.img_w[sel] / 2, cols.cy[sel] - cols.img_h[sel] / 2)
    centrality = np.clip(1.0 - dist / half_diag, 0.0, 1.0)
    note_area = np.maximum(th.note_min_share * img_area, th.note_min_relative * cols.area[sel])
    of_note = cols.area[other] >= note_area[ref_of_pair]
    others_of_note = np.bincount(ref_of_pair, weights=of_note, minlength=R).astype(np.int64)
    n_others = np.bincount(ref_of_pair, minlength=R)
    bigger = np.bincount(ref_of_pair, weights=cols.area[other] > cols.area[src], minlength=R)
    largest = bigger == 0
    too_big = area_share >= th.max_area_share
    framed = largest & (area_share >= th.subject_area_share) & (centrality >= th.subject_centrality)
    rule1 = (others_of_note > 0) & ~too_big & ~framed

    # --- rule 2
    same_cat = cols.cat_ids[other] == cols.cat_ids[src]
    n_same = np.bincount(ref_of_pair, weights=same_cat, minlength=R).astype(np.int64)
    app = _appearance(data, cols, sel, ref_of_pair, other, th, use_images, clip_model, model_overrides, progress)
    combined = th.colour_weight * app.colour + (1 - th.colour_weight) * np.nan_to_num(app.shape, nan=0.0)
    with np.errstate(invalid="ignore"):
        looks_alike = (app.colour >= th.colour_threshold) & (combined >= th.appearance_threshold)
        clip_alike = app.clip >= th.clip_threshold
    similar = same_cat | looks_alike | clip_alike
    n_similar = np.bincount(ref_of_pair, weights=similar, minlength=R).astype(np.int64)
    rule2 = n_similar > 0

    # --- per-ref maxima of the appearance scores (argmax of combined per ref)
    best = _best_per_ref(ref_of_pair, combined, R)
    has_best = best >= 0
    b = np.where(has_best, best, 0)

    def at_best(values: np.ndarray) -> list[float | None]:
        v = np.where(has_best, values[b] if len(values) else np.nan, np.nan)
        return [None if math.isnan(x) else x for x in v.tolist()]

    alike_ann = np.where(has_best, cols.ann_ids[other[b]] if len(other) else -1, -1).tolist()
    colour_b, shape_b, combined_b = at_best(app.colour), at_best(app.shape), at_best(combined)
    clip_b = [None if math.isnan(x) else x for x in _max_per_ref(ref_of_pair, app.clip, R).tolist()]
    any_alike = np.bincount(ref_of_pair, weights=looks_alike, minlength=R) > 0
    any_clip = np.bincount(ref_of_pair, weights=clip_alike, minlength=R) > 0
    # similar annotation ids of each ref: one split of the flat array (pairs are grouped by ref)
    sim_counts = np.bincount(ref_of_pair[similar], minlength=R)
    sim_lists = [a.tolist() for a in np.split(cols.ann_ids[other[similar]], np.cumsum(sim_counts)[:-1])]

    cat_name = {int(c["id"]): str(c["name"]) for c in data.categories}
    cols_py = [x.tolist() for x in (area_share, centrality, n_others, others_of_note, largest, n_same,
                                    app.measured, rule1, rule2, too_big, framed, any_alike, any_clip,
                                    cols.cat_ids[sel])]
    out: list[Candidate] = []
    for k, ref in enumerate(refs):
        (share, cen, n_oth, n_note, big, same, measured, r1, r2, tb, fr, alike, clip_ok, cat) = (c[k] for c in cols_py)
        measures: dict[str, Any] = {
            "area_share": share,
            "centrality": cen,
            "objects": n_oth,
            "others_of_note": n_note,
            "largest": big,
            "same_category": same,
            "appearance_measured": measured,
            "most_alike_ann": alike_ann[k] if alike_ann[k] >= 0 else None,
            "colour_similarity": colour_b[k],
            "shape_similarity": shape_b[k],
            "appearance_similarity": combined_b[k],
            "clip_similarity": clip_b[k],
        }
        name = cat_name.get(cat, str(cat))
        reasons = [_rule1_reason(r1, tb, fr, measures, th), _rule2_reason(r2, name, measures, alike, clip_ok, th)]
        if not measured:
            reasons.append(f"appearance not measured ({app.note[k]}): only the category test ran")
        out.append(Candidate(
            ref_id=int(ref["ref_id"]), ann_id=int(ref["ann_id"]), image_id=int(ref["image_id"]), category=name,
            eligible=r1 and r2, not_sole_subject=r1, has_similar=r2,
            measures=measures, reasons=reasons, similar_anns=sim_lists[k],
        ))
    return out


def _best_per_ref(groups: np.ndarray, score: np.ndarray, n: int) -> np.ndarray:
    """Pair index of the highest non-NaN score of each group (groups sorted), -1 where none."""
    out = np.full(n, -1, dtype=np.int64)
    valid = np.flatnonzero(~np.isnan(score))
    if valid.size:
        # sort by (group, score descending); the first of each group is its best
        order = valid[np.lexsort((-score[valid], groups[valid]))]
        g = groups[order]
        first = np.ones(len(order), dtype=bool)
        first[1:] = g[1:] != g[:-1]
        out[g[first]] = order[first]
    return out


def _max_per_ref(groups: np.ndarray, score: np.ndarray, n: int) -> np.ndarray:
    out = np.full(n, np.nan)
    valid = ~np.isnan(score)
    if valid.any():
        tmp = np.full(n, -np.inf)
        np.maximum.at(tmp, groups[valid], score[valid])
        out = np.where(np.isfinite(tmp), tmp, np.nan)
    return out


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _rule1_reason(ok: bool, too_big: bool, framed: bool, m: dict, th: SelectionThresholds) -> str:
    share, cen, note = m["area_share"], m["centrality"], m["others_of_note"]
    if ok:
        return (f"not the sole subject: covers {_pct(share)} of the image, {note} other object(s) of note, "
                f"centrality {cen:.2f}")
    if too_big:
        return f"sole prominent subject: covers {_pct(share)} of the image (limit {_pct(th.max_area_share)})"
    if framed:
        return (f"sole prominent subject: the largest object, covering {_pct(share)} "
                f"(>= {_pct(th.subject_area_share)}) near the centre "
                f"(centrality {cen:.2f} >= {th.subject_centrality:.2f})")
    return (f"sole prominent subject: no other object of note ({m['objects']} other object(s), none covering "
            f"{_pct(th.note_min_share)} of the image and {_pct(th.note_min_relative)} of this one's area)")


def _rule2_reason(ok: bool, name: str, m: dict, alike: bool, clip_alike: bool, th: SelectionThresholds) -> str:
    parts = []
    if m["same_category"]:
        parts.append(f"{m['same_category']} other {name}(s)")
    if alike:
        parts.append(f"ann {m['most_alike_ann']} looks alike (colour {m['colour_similarity']:.2f}, "
                     f"shape {m['shape_similarity']:.2f})")
    if clip_alike:
        parts.append(f"CLIP similarity {m['clip_similarity']:.2f} >= {th.clip_threshold:.2f}")
    if ok:
        return "similar object present: " + "; ".join(parts)
    why = f"no similar object: no other {name}"
    if m["appearance_similarity"] is not None:
        why += (f"; closest in appearance ann {m['most_alike_ann']} (colour {m['colour_similarity']:.2f}, "
                f"combined {m['appearance_similarity']:.2f} < {th.appearance_threshold:.2f})")
    if m["clip_similarity"] is not None:
        why += f"; CLIP similarity {m['clip_similarity']:.2f} < {th.clip_threshold:.2f}"
    return why


# ------------------------------------------------------------------------------ appearance over images


def _appearance(data, cols: _Columns, sel: np.ndarray, ref_of_pair: np.ndarray, other: np.ndarray,
                th: SelectionThresholds, use_images: bool, clip_model: str | None,
                overrides: dict[str, str] | None, progress: bool) -> _Appearance:
    R, P = len(sel), len(other)
    app = _Appearance(np.full(P, np.nan), np.full(P, np.nan), np.full(P, np.nan), np.zeros(R, bool), [None] * R)
    if not use_images:
        app.note = ["images not used"] * R
        return app
    image_dir = getattr(data, "image_dir", None)
    if image_dir is None or not image_dir.is_dir():
        app.note = [f"image folder {image_dir} not found"] * R
        return app
    embed = _clip_embedder(clip_model, overrides) if clip_model else None

    # refs grouped by image; the pairs of ref k are bounds[k]:bounds[k+1]
    bounds = np.searchsorted(ref_of_pair, np.arange(R + 1))
    ref_images = cols.image_ids[sel]
    order = np.argsort(ref_images, kind="stable")
    split_at = np.flatnonzero(np.diff(ref_images[order])) + 1
    groups = np.split(order, split_at)
    if progress:
        from tqdm import tqdm

        groups = tqdm(groups, desc="appearance", unit="image", disable=None)
    for refs_k in groups:
        image_id = int(ref_images[refs_k[0]])
        try:
            path = data.image_path(image_id)
            if not path.is_file():
                raise FileNotFoundError
        except (FileNotFoundError, DataError):
            for k in refs_k:
                app.note[k] = "image file missing"
            continue
        try:
            feats = _image_features(data, cols, image_id, int(cols.start[sel[refs_k[0]]]),
                                    int(cols.count[sel[refs_k[0]]]), th, embed)
        except DataError as exc:
            log.warning("appearance of image %s not measured: %s", image_id, exc)
            for k in refs_k:
                app.note[k] = f"image unreadable: {exc}"
            continue
        hist, desc, emb = feats
        start = int(cols.start[sel[refs_k[0]]])
        for k in refs_k:
            lo, hi = bounds[k], bounds[k + 1]
            a, b = sel[k] - start, other[lo:hi] - start
            app.colour[lo:hi] = histogram_intersection(hist[a], hist[b])
            app.shape[lo:hi] = shape_similarity(desc[a], desc[b])
            if emb is not None:
                app.clip[lo:hi] = emb[b] @ emb[a]
            app.measured[k] = True
    return app


def _image_features(data, cols: _Columns, image_id: int, start: int, count: int, th: SelectionThresholds,
                    embed: Callable | None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Colour histograms, shape descriptors (and CLIP embeddings) of every annotation of one image."""
    pixels = np.asarray(data.load_image(image_id))
    hists, descs, masks = [], [], []
    for p in range(start, start + count):
        mask = data.ann_mask(int(cols.ann_ids[p])).astype(bool)
        hists.append(colour_histogram(pixels[mask], th.histogram_bins))
        descs.append(shape_descriptors(mask))
        masks.append(mask)
    emb = embed(pixels, masks) if embed is not None else None
    return np.stack(hists), np.stack(descs), emb


def _clip_embedder(name: str, overrides: dict[str, str] | None) -> Callable[[np.ndarray, list[np.ndarray]], np.ndarray]:
    """A function (image, masks) -> unit CLIP image embeddings of the masked object crops."""
    import torch
    from transformers import CLIPModel

    try:  # the PIL image processor: the default one wants torchvision, which this stack keeps out
        from transformers import CLIPImageProcessorPil as CLIPImageProcessor
    except ImportError:
        from transformers import CLIPImageProcessor

    from refcoco_edit.models.resolver import load_pretrained

    model, processor = load_pretrained(
        name, lambda src: (CLIPModel.from_pretrained(src).eval(), CLIPImageProcessor.from_pretrained(src)), overrides
    )

    def embed(pixels: np.ndarray, masks: list[np.ndarray]) -> np.ndarray:
        crops = []
        for mask in masks:
            ys, xs = np.nonzero(mask)
            if len(ys) == 0:
                crops.append(np.full((8, 8, 3), 128, np.uint8))
                continue
            y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
            crop = pixels[y0:y1, x0:x1].copy()
            crop[~mask[y0:y1, x0:x1]] = 128  # grey out the background inside the box
            crops.append(crop)
        with torch.no_grad():
            inputs = processor(images=crops, return_tensors="pt")
            feats = model.get_image_features(pixel_values=inputs["pixel_values"])
            if not isinstance(feats, torch.Tensor):  # newer transformers return an output object
                feats = feats.pooler_output
            feats = torch.nn.functional.normalize(feats.float(), dim=-1)
        return feats.numpy().astype(np.float64)

    return embed


def summarise(candidates: Iterable[Candidate]) -> dict[str, int]:
    """Counts of eligible refs and of each rule's failures."""
    c = list(candidates)
    return {
        "refs": len(c),
        "eligible": sum(x.eligible for x in c),
        "sole_subject": sum(not x.not_sole_subject for x in c),
        "no_similar": sum(not x.has_similar for x in c),
        "appearance_measured": sum(bool(x.measures["appearance_measured"]) for x in c),
    }
