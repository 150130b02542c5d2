"""Stage-1 synthesis for ReferDiffusion: self-supervised editing samples from referring segmentation.

For each ref (object mask + referring expression) of a RefCOCO-family dataset:

1. Dilate the object mask M by a few pixels, in proportion to the object's size
   (radius = `dilation_ratio` x sqrt(area), clipped to [`min_dilation_px`, `max_dilation_px`]),
   with an elliptical OpenCV kernel. The dilated mask is the edit mask M_e, so M_e contains M.
2. Cover M_e with one flat, *named* colour (a fixed RGB per name). Colours named in the expression
   and colours close to the object's mean colour are avoided, so the cover stands out and the prompt
   does not say "the red mask" about a red object.
3. Prompt, in one of two styles (`prompt_style`; both are recorded in `generation["prompts"]`, so a
   training config can pick either from one dataset):
   - `mask` (the default, the paper's recipe): the coloured mask is the referring part and the subject
     the edit part, "paint a sandwich on the blue mask" (P_r = "the blue mask", P_e = "paint a
     sandwich"); the RefCOCO expression only supplies the subject noun.
   - `expression` (the toolkit's earlier recipe): the ref's expression is the referring part and the
     subject and colour the edit part, "paint a man on the red mask where the man on the left was".
   Templates mark the edit part (<...>) and the referring part ({ref}); `prompts.render` records both
   spans while it assembles the text, so `referring_spans` and `edit_spans` are exact and non-empty by
   construction (and checked again by `schema.validate`). With `enrich` > 0 an LLM (through
   `refcoco_edit.text.llm`) rephrases the prompt; a rephrasing is kept only if it passes the rephrasing
   checks and still names the colour in the part that carries it (P_r for `mask`, P_e for `expression`).
4. Sample: source I_s = the covered picture, target I_e = the original picture, edit_mask = M_e,
   source_mask = M, edit_type "other", target = the subject noun, pipeline "synthetic", status
   "accepted", annotator "synth".
5. Augmentations, applied to the source, the target and both masks together: a random crop that keeps
   the whole of M_e (a share `min_crop_scale`..1 of each side, no resize), and a horizontal flip.
   Flipping mirrors the picture, so "left" and "right" in the expression would then point at the wrong
   side: the flip swaps left/right words (left <-> right, leftmost <-> rightmost, also inside
   "left-hand") in the expression before the prompt is made, and is skipped when the expression holds
   an abbreviated direction it cannot swap safely ("lft", "rt", ...). (A "left" that means "remaining"
   is swapped too; such expressions are rare in RefCOCO.) The rule holds in both prompt styles, since
   the `expression` prompt is recorded beside a `mask` one.

Splits: only `train` refs by default. RefCOCO-Edit evaluates on the other splits (val, testA, testB,
test), so their pictures must not become training targets; they are refused unless asked for with
`allow_eval_splits` (`--allow-eval-splits`), which logs a warning. `generation["image_sha256"]` is
`picture_hash` of the untouched picture, so a training run can tell later which pictures it saw.

Everything random comes from `random.Random(f"synth:{seed}:{ref_id}")`, so one ref gives the same
sample whatever `limit`, split filter or order, and the same seed gives the same dataset. Timestamps
are left empty for the same reason. Output goes through `export.DatasetWriter`: the same parquet +
save_to_disk + card layout as `refcoco-edit export`.
"""

from __future__ import annotations

import logging
import math
import random
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from refcoco_edit.errors import DataError, InputError, RefcocoEditError
from refcoco_edit.schema import Sample
from refcoco_edit.text.prompts import Prompt, ref_sentences, referring_phrase, render
from refcoco_edit.text.subjects import COLOUR_WORDS, extract_subject, tokens

log = logging.getLogger(__name__)

# Named cover colours (name -> RGB). Names are plain colour words a text encoder knows.
NAMED_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 20, 30),
    "green": (20, 160, 50),
    "blue": (20, 60, 220),
    "yellow": (250, 220, 20),
    "orange": (250, 130, 10),
    "purple": (120, 30, 160),
    "pink": (250, 120, 190),
    "cyan": (20, 220, 230),
    "magenta": (230, 20, 200),
    "white": (255, 255, 255),
    "black": (0, 0, 0),
    "gray": (128, 128, 128),
    "brown": (120, 70, 20),
}
_COLOUR_SYNONYMS = {"grey": "gray", "violet": "purple", "teal": "cyan", "turquoise": "cyan"}
MIN_COLOUR_DISTANCE = 80.0  # RGB distance from the object's mean colour below which a colour is avoided

# Prompt styles: `mask` (the paper's: P_r is the coloured mask, P_e paints the subject) and `expression`
# (P_r is the RefCOCO expression, P_e paints the subject on the coloured mask).
PROMPT_STYLES = ("mask", "expression")
DEFAULT_PROMPT_STYLE = "mask"
# Every split but this one is an evaluation split of RefCOCO-Edit (val, testA, testB, test).
TRAIN_SPLIT = "train"

# <...> is the edit part, {ref} the referring part ("the {colour} mask"), the rest glue.
MASK_TEMPLATES: tuple[str, ...] = (
    "<paint {target_np}> on {ref}",
    "<draw {target_np}> over {ref}",
    "<fill> {ref} <with {target_np}>",
    "<replace> {ref} <with {target_np}>",
    "<turn> {ref} <into {target_np}>",
    "<paint {target_np}> in {ref}",
    "<put {target_np}> where {ref} is",
    "<restore {target_np}> under {ref}",
)
# <...> is the edit part (subject and colour), {ref} the referring part (the expression), the rest glue.
EXPRESSION_TEMPLATES: tuple[str, ...] = (
    "<paint {target_np} on the {colour} mask> where {ref} was",
    "<paint {target_np} on the {colour} mask> to bring back {ref}",
    "<draw {target_np} over the {colour} mask> in place of {ref}",
    "<fill the {colour} mask with {target_np}> where {ref} should be",
    "<replace the {colour} mask with {target_np}>: it hides {ref}",
    "<restore {target_np} under the {colour} mask> where {ref} is",
    "{ref} is covered by a mask: <paint {target_np} on the {colour} mask>",
    "<paint {target_np} on the {colour} mask> that covers {ref}",
)

# direction words a flip must swap, and abbreviations it cannot swap safely
_LEFT_RIGHT = re.compile(r"\b(left|right)(most)?\b", re.IGNORECASE)
_UNSWAPPABLE = frozenset({"lft", "rgt", "rght", "rt", "lt", "rite"})

SYNTH_HOW_BUILT = """\
Stage-1 (self-supervised) samples for ReferDiffusion, made from referring-segmentation data without
any generative model. For each ref, the object's mask is dilated by a few pixels (in proportion to
the object's size) and the dilated area is filled with one flat named colour; the covered picture is
the source, the untouched picture is the target, the dilated mask is the edit mask and the object's
mask is the source mask. The prompt asks to paint the object's subject noun on the coloured mask. In
the default `mask` style (the ReferDiffusion paper's) the coloured mask is the referring part and the
painting of the subject the edit part ("paint a sandwich on the blue mask"); in the `expression` style
the RefCOCO expression is the referring part. Exact character spans of both parts are recorded, and
both styles' prompts are kept in the `generation` column; templates vary the phrasing. Only refs of the
`train` split are used unless evaluation splits were asked for explicitly. A random crop that keeps
the whole edit mask and a horizontal flip (with left/right swapped in the expression, or skipped when
the expression has a direction it cannot swap) are applied to all images and masks together.
Every sample has edit type `other` and pipeline `synthetic`."""


@dataclass
class SynthConfig:
    """Knobs of stage-1 synthesis; defaults are the ones the training recipe uses."""

    seed: int = 0
    limit: int | None = None  # stop after this many samples
    split: str | None = TRAIN_SPLIT  # one RefCOCO split, or None for all
    allow_eval_splits: bool = False  # True: val/testA/testB/test refs may be used (with a warning)
    prompt_style: str = DEFAULT_PROMPT_STYLE  # mask (the paper's) | expression
    dilation_ratio: float = 0.05  # dilation radius = ratio x sqrt(object area) ...
    min_dilation_px: int = 3  # ... clipped to this range
    max_dilation_px: int = 25
    crop_prob: float = 0.5
    min_crop_scale: float = 0.6  # a crop keeps at least this share of each side (or all of M_e)
    flip_prob: float = 0.5
    enrich: int = 0  # LLM rephrasings asked per prompt (0: templates only)
    colours: tuple[str, ...] = tuple(NAMED_COLOURS)

    def check(self) -> SynthConfig:
        if self.limit is not None and self.limit < 1:
            raise InputError("--limit must be at least 1")
        if not 0 <= self.crop_prob <= 1 or not 0 <= self.flip_prob <= 1:
            raise InputError("crop and flip probabilities must lie in [0, 1]")
        if not 0 < self.min_crop_scale <= 1:
            raise InputError("min_crop_scale must lie in (0, 1]")
        if self.min_dilation_px < 1 or self.max_dilation_px < self.min_dilation_px:
            raise InputError("dilation must be at least 1 px and max >= min")
        unknown = [c for c in self.colours if c not in NAMED_COLOURS]
        if unknown or not self.colours:
            raise InputError(f"unknown colour(s) {', '.join(unknown) or '(none)'}; known: {', '.join(NAMED_COLOURS)}")
        if self.enrich < 0:
            raise InputError("--enrich must be 0 or more")
        if self.prompt_style not in PROMPT_STYLES:
            raise InputError(f"unknown prompt style {self.prompt_style!r}; known: {', '.join(PROMPT_STYLES)}")
        if self.split is not None and self.split != TRAIN_SPLIT and not self.allow_eval_splits:
            raise InputError(eval_split_message([self.split]))
        return self


def eval_split_message(splits: Iterable[str]) -> str:
    names = ", ".join(sorted(splits))
    return (f"split(s) {names} are RefCOCO-Edit evaluation splits: stage-1 data made from them puts evaluation "
            f"pictures into training. Use --split {TRAIN_SPLIT} (the default), or pass --allow-eval-splits to "
            "use them anyway")


def selected_eval_splits(data: Any, cfg: SynthConfig) -> list[str]:
    """The evaluation splits (every split but train) whose refs `cfg` would use."""
    if cfg.split is not None:
        return [] if cfg.split == TRAIN_SPLIT else [cfg.split]
    seen = {str(data.ref(r).get("split", "")) for r in data.ref_ids()}
    return sorted(s for s in seen if s and s != TRAIN_SPLIT)


def check_splits(data: Any, cfg: SynthConfig) -> list[str]:
    """Refuse evaluation splits unless `cfg.allow_eval_splits`; then warn and return them."""
    evals = selected_eval_splits(data, cfg)
    if evals and not cfg.allow_eval_splits:
        raise InputError(eval_split_message(evals))
    if evals:
        log.warning("stage-1 data from evaluation split(s) %s: a model trained on it has seen pictures that "
                    "RefCOCO-Edit evaluates on", ", ".join(evals))
    return evals


def picture_hash(pixels: np.ndarray) -> str:
    """sha256 of a picture's decoded pixels: "<width>x<height>:" then the RGB bytes, row-major.

    Decoded pixels rather than file bytes, so the same picture read from a JPEG file, a PNG in a store or
    a parquet export hashes the same (lossless re-encoding does not change it)."""
    import hashlib

    arr = np.ascontiguousarray(pixels, dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise InputError(f"picture_hash needs an (H, W, 3) RGB array, got shape {arr.shape}")
    digest = hashlib.sha256(f"{arr.shape[1]}x{arr.shape[0]}:".encode())
    digest.update(arr.tobytes())
    return digest.hexdigest()


class SkipRef(RefcocoEditError):
    """This ref cannot give a stage-1 sample (no expression, empty mask, unreadable image)."""


# ---------------------------------------------------------------------------- pieces
def dilation_radius(area: float, cfg: SynthConfig) -> int:
    return int(min(cfg.max_dilation_px, max(cfg.min_dilation_px, round(cfg.dilation_ratio * math.sqrt(area)))))


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """The mask grown by `radius` pixels with an elliptical kernel (0/1 uint8, contains the input)."""
    import cv2

    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    return (cv2.dilate(mask.astype(np.uint8), kernel) > 0).astype(np.uint8)


def colours_named_in(text: str) -> set[str]:
    """Cover colours the text names (synonyms folded: "grey" -> gray)."""
    out = set()
    for w in tokens(text):
        if w in COLOUR_WORDS:
            out.add(_COLOUR_SYNONYMS.get(w, w))
    return out


def choose_colour(rng: random.Random, expression: str, object_rgb: np.ndarray | None,
                  colours: Iterable[str] = tuple(NAMED_COLOURS)) -> str:
    """A cover colour the expression does not name and that differs from the object's mean colour."""
    pool = sorted(colours)
    named = colours_named_in(expression)
    unnamed = [c for c in pool if c not in named] or pool
    far = unnamed
    if object_rgb is not None:
        far = [c for c in unnamed
               if float(np.linalg.norm(np.asarray(NAMED_COLOURS[c], float) - object_rgb)) >= MIN_COLOUR_DISTANCE]
    return rng.choice(far or unnamed)


def swap_left_right(text: str) -> str | None:
    """`text` with left and right swapped (case kept), or None when it holds a direction word
    that cannot be swapped safely (then the sample is not flipped)."""
    if any(w in _UNSWAPPABLE for w in re.findall(r"[a-z]+", text.lower())):
        return None

    def swap(m: re.Match) -> str:
        word, most = m.group(1), m.group(2) or ""
        new = "right" if word.lower() == "left" else "left"
        if word.isupper():
            new = new.upper()
        elif word[:1].isupper():
            new = new.capitalize()
        return new + most

    return _LEFT_RIGHT.sub(swap, text)


def mask_bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1), end exclusive, of the non-zero pixels."""
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def crop_box(rng: random.Random, keep: tuple[int, int, int, int], width: int, height: int,
             min_scale: float) -> tuple[int, int, int, int]:
    """A random (x0, y0, x1, y1) crop that contains the box `keep`; each side at least `min_scale`
    of the picture's (one scale for both sides, so the shape stays close to the picture's)."""
    kx0, ky0, kx1, ky1 = keep
    scale = rng.uniform(min_scale, 1.0)
    cw = min(width, max(kx1 - kx0, round(width * scale)))
    ch = min(height, max(ky1 - ky0, round(height * scale)))
    x0 = rng.randint(max(0, kx1 - cw), min(kx0, width - cw))
    y0 = rng.randint(max(0, ky1 - ch), min(ky0, height - ch))
    return x0, y0, x0 + cw, y0 + ch


def mask_phrase(colour: str) -> str:
    """The referring part of a `mask`-style prompt: "the blue mask"."""
    return f"the {colour} mask"


def compose_prompt(rng: random.Random, expression: str, noun: str, colour: str,
                   style: str = DEFAULT_PROMPT_STYLE) -> tuple[Prompt, str]:
    """The stage-1 prompt of one style and the template it came from; spans exact (validated)."""
    if style == "mask":
        template = rng.choice(MASK_TEMPLATES)
        prompt = render(template, mask_phrase(colour), "other", noun)
    elif style == "expression":
        template = rng.choice(EXPRESSION_TEMPLATES)
        prompt = render(template, referring_phrase(expression), "other", noun, colour=colour)
    else:
        raise InputError(f"unknown prompt style {style!r}; known: {', '.join(PROMPT_STYLES)}")
    return prompt.validate(), template


def compose_prompts(rng: random.Random, expression: str, noun: str, colour: str) -> dict[str, tuple[Prompt, str]]:
    """Both styles' prompts, templates drawn in a fixed order (expression first, as the earlier recipe drew
    it alone), so a ref's prompts do not depend on the style asked for."""
    return {style: compose_prompt(rng, expression, noun, colour, style) for style in ("expression", "mask")}


def prompt_record(prompt: Prompt) -> dict[str, Any]:
    """What `generation["prompts"][style]` keeps of a prompt: the text and both parts' spans."""
    return {"prompt": prompt.prompt, "referring_spans": prompt.referring_spans, "edit_spans": prompt.edit_spans}


# ---------------------------------------------------------------------------- one ref
@dataclass
class _Context:
    """Per-dataset things every ref needs."""

    category_names: list[str]
    rephraser: Any = None


def synth_sample(data: Any, ref_id: int, cfg: SynthConfig, ctx: _Context | None = None) -> Sample:
    """The stage-1 sample of one ref; raises `SkipRef` when the ref cannot give one."""
    from PIL import Image

    if ctx is None:
        ctx = _Context([c["name"] for c in data.categories])
    rng = random.Random(f"synth:{cfg.seed}:{ref_id}")
    ref = data.ref(ref_id)
    sentences = ref_sentences(ref)
    if not sentences:
        raise SkipRef("no referring expression")
    sent_index = rng.randrange(len(sentences))
    sentence = sentences[sent_index]
    ann = data.ref_ann(ref_id)
    category = data.category(ann["category_id"])["name"]
    subject = extract_subject(sentence, category, ctx.category_names)
    noun = subject.noun or category
    mask = data.mask(ref_id)
    area = int(mask.sum())
    if area == 0:
        raise SkipRef("empty object mask")
    try:
        image = np.asarray(data.load_image(ref["image_id"]).convert("RGB"))
    except (DataError, InputError, OSError) as exc:
        raise SkipRef(f"image: {exc}") from None
    image_sha256 = picture_hash(image)
    if image.shape[:2] != mask.shape:
        raise SkipRef(f"image is {image.shape[1]}x{image.shape[0]} but the mask is {mask.shape[1]}x{mask.shape[0]}")
    radius = dilation_radius(area, cfg)
    edit_mask = dilate(mask, radius)
    colour = choose_colour(rng, sentence, image[mask > 0].mean(axis=0), cfg.colours)

    # augmentations: draws made in a fixed order, whatever is decided, so a ref's sample is stable
    want_flip = rng.random() < cfg.flip_prob
    want_crop = rng.random() < cfg.crop_prob
    expression, flipped, flip_skipped = sentence, False, None
    if want_flip:
        swapped = swap_left_right(sentence)
        if swapped is None:
            flip_skipped = "the expression has a direction word that cannot be swapped"
        else:
            expression, flipped = swapped, True
    h, w = mask.shape
    box = crop_box(rng, mask_bbox(edit_mask), w, h, cfg.min_crop_scale) if want_crop else (0, 0, w, h)
    x0, y0, x1, y1 = box

    def aug(a: np.ndarray) -> np.ndarray:
        a = a[y0:y1, x0:x1]
        return np.ascontiguousarray(a[:, ::-1] if flipped else a)

    target = aug(image)
    m = aug(mask)
    me = aug(edit_mask)
    source = target.copy()
    source[me > 0] = NAMED_COLOURS[colour]

    styles = compose_prompts(rng, expression, noun, colour)
    prompt, template = styles[cfg.prompt_style]
    template_prompt = prompt.prompt
    if ctx.rephraser is not None and cfg.enrich > 0:
        prompt = _enriched(ctx, prompt, cfg.enrich, colour, category, rng, cfg.prompt_style)
    prompts = {style: prompt_record(p) for style, (p, _) in styles.items()}
    prompts[cfg.prompt_style] = prompt_record(prompt)
    generation = {
        "stage": 1, "method": "synth", "seed": cfg.seed, "colour": colour, "rgb": list(NAMED_COLOURS[colour]),
        "dilation_px": radius, "crop_xyxy": list(box) if want_crop else None, "flipped": flipped,
        "flip_skipped": flip_skipped, "sentence": sentence, "sent_index": sent_index, "template": template,
        "subject": noun, "subject_how": subject.how, "prompt_source": prompt.source,
        "template_prompt": template_prompt, "prompt_style": cfg.prompt_style, "prompts": prompts,
        "image_sha256": image_sha256,
    }
    return Sample(
        sample_id=f"synth-{ref_id}-s{cfg.seed}", image_id=int(ref["image_id"]), ref_id=int(ref_id),
        ann_id=int(ref["ann_id"]), split=str(ref.get("split", "")),
        source_image=Image.fromarray(source, "RGB"), edited_image=Image.fromarray(target, "RGB"),
        source_mask=m.astype(np.uint8), edit_mask=me.astype(np.uint8),
        prompt=prompt.prompt, referring_text=prompt.referring_text, edit_text=prompt.edit_text,
        referring_spans=prompt.referring_spans, edit_spans=prompt.edit_spans, edit_type="other", target=noun,
        pipeline="synthetic", generation=generation, annotator="synth", reviewer="", status="accepted",
    )


def _enriched(ctx: _Context, prompt: Prompt, n: int, colour: str, category: str, rng: random.Random,
              style: str = DEFAULT_PROMPT_STYLE) -> Prompt:
    """One of the prompt and its LLM rephrasings that keep the colour in the part that carries it
    (P_r for `mask`, P_e for `expression`), chosen by `rng`."""
    try:
        enrichment = ctx.rephraser.rephrase(prompt, n, category=category, extra_nouns=ctx.category_names)
    except RefcocoEditError as exc:
        log.warning("rephrasing %r failed, the template prompt stands: %s", prompt.prompt, exc)
        return prompt
    keep = [p for p in enrichment.rephrasings
            if colour in tokens(p.referring_text if style == "mask" else p.edit_text) and not p.problems()]
    return rng.choice([prompt, *keep])


# ---------------------------------------------------------------------------- many refs
@dataclass
class SynthSummary:
    refs_seen: int = 0
    written: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason -> refs
    flipped: int = 0
    flips_skipped: int = 0
    cropped: int = 0
    colours: Counter = field(default_factory=Counter)
    export: Any = None  # export.ExportSummary

    def to_dict(self) -> dict[str, Any]:
        return {"refs_seen": self.refs_seen, "written": self.written, "skipped": dict(self.skipped),
                "flipped": self.flipped, "flips_skipped": self.flips_skipped, "cropped": self.cropped,
                "colours": dict(sorted(self.colours.items())),
                "export": self.export.to_dict() if self.export is not None else None}


def iter_synth(data: Any, cfg: SynthConfig, summary: SynthSummary | None = None,
               rephraser: Any = None, *, splits_checked: bool = False) -> Iterator[Sample]:
    """Stage-1 samples of the dataset's refs in file order (one split when `cfg.split`), up to `cfg.limit`.
    Evaluation splits are refused unless `cfg.allow_eval_splits` (`check_splits`, unless the caller did)."""
    cfg.check()
    if not splits_checked:
        check_splits(data, cfg)
    summary = summary if summary is not None else SynthSummary()
    ctx = _Context([c["name"] for c in data.categories], rephraser)
    for ref_id in data.ref_ids(split=cfg.split):
        if cfg.limit is not None and summary.written >= cfg.limit:
            return
        summary.refs_seen += 1
        try:
            sample = synth_sample(data, ref_id, cfg, ctx)
        except SkipRef as exc:
            log.info("ref %s skipped: %s", ref_id, exc)
            summary.skipped[_reason_key(str(exc))] += 1
            continue
        g = sample.generation
        summary.written += 1
        summary.flipped += int(g["flipped"])
        summary.flips_skipped += int(g["flip_skipped"] is not None)
        summary.cropped += int(g["crop_xyxy"] is not None)
        summary.colours[g["colour"]] += 1
        yield sample


def _reason_key(reason: str) -> str:
    return reason.split(":")[0]


def synth_dataset(data: Any, out: Path | str, cfg: SynthConfig, *, rephraser: Any = None,
                  shard_size: int = 1000, overwrite: bool = False, save_to_disk: bool = True,
                  progress: bool = False) -> SynthSummary:
    """Write stage-1 samples of `data` (a `RefCOCO`) as a dataset folder, in the export's format."""
    from refcoco_edit.dataset.card import CardInfo
    from refcoco_edit.dataset.export import DatasetWriter

    cfg.check()
    check_splits(data, cfg)
    summary = SynthSummary()
    card = CardInfo(
        pretty_name="RefCOCO-Edit stage-1 (synthetic)",
        summary=("Self-supervised referring-editing samples: the referred object is covered by a flat named "
                 "colour and the instruction asks to paint it back."),
        how_built=SYNTH_HOW_BUILT,
        source=f"{data.dataset} ({data.split_by})" + (f", split {cfg.split}" if cfg.split else ", every split")
               + f", seed {cfg.seed}, prompt style {cfg.prompt_style}",
        extra_tags=["synthetic", "self-supervised"],
    )
    total = cfg.limit if cfg.limit is not None else len(data.ref_ids(split=cfg.split))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, desc="synth", unit="sample", disable=None)
    with DatasetWriter(out, shard_size=shard_size, overwrite=overwrite, card=card,
                       save_to_disk=save_to_disk) as writer:
        for sample in iter_synth(data, cfg, summary, rephraser, splits_checked=True):
            problems = writer.check(sample)
            if problems:  # cannot happen by construction; never let one sample sink the whole run
                log.warning("synthesised sample %s is not valid, skipped: %s", sample.sample_id, "; ".join(problems))
                summary.written -= 1
                summary.skipped["invalid"] += 1
                continue
            writer.add(sample)
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        if summary.written == 0:
            raise InputError(f"no ref gave a sample ({dict(summary.skipped) or 'no refs selected'})")
        summary.export = writer.finish()
    return summary
