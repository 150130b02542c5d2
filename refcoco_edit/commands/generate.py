"""`refcoco-edit generate`: reference-edit candidates for one image and mask.

Writes into --out: `candidate_<i>.png` (the edited image at the source's size), `candidate_<i>_mask.png`
(its edit mask M_e, 0/255) and `candidates.json`: the request (pipeline, model, inputs, options), the
library versions, and per candidate its seed, parameters, model, score and file names (relative to
--out). Nothing in it depends on the time, so the same request gives the same bytes on one machine.

`--model` takes either a model name for the pipeline (`--model tiny-sd15`) or, like the other
commands, a resolver override `NAME=PATH_OR_HUB_ID` (repeatable); both can be given.
"""

from __future__ import annotations

import argparse
import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from refcoco_edit.pipelines import PIPELINES  # the registry imports only the standard library

if TYPE_CHECKING:
    from refcoco_edit.pipelines.capabilities import EditPipeline, EditRequest

PIPELINE_NAMES = tuple(PIPELINES)
logger = logging.getLogger(__name__)
CANDIDATES_FILE = "candidates.json"


def register(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "generate",
        help=f"make reference-edit candidates ({', '.join(PIPELINE_NAMES)})",
        description="Generate K candidate edits of IMAGE inside MASK and write them with candidates.json.",
    )
    p.add_argument("--pipeline", required=True, choices=PIPELINE_NAMES)
    p.add_argument("--image", type=Path, required=True, help="source image")
    p.add_argument("--mask", type=Path, required=True, help="region mask PNG (pixels above 127 are inside)")
    p.add_argument("--text", help="edit text (region_edit, required) or background prompt (inpaint)")
    p.add_argument("--example", type=Path, help="example image of the substitute object (composition)")
    p.add_argument("--example-mask", type=Path, metavar="MASK",
                   help="crop the example to this object mask of --example (an object of the dataset)")
    p.add_argument("--model", dest="model_args", action="append", default=[], metavar="NAME|NAME=PATH_OR_HUB_ID",
                   help="model for the pipeline (a resolver name), or a resolver override (repeatable)")
    p.add_argument("--num", type=int, default=1, metavar="K", help="number of candidates (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first candidate; candidate i gets seed+i")
    p.add_argument("--steps", type=int, help="denoising steps (default 50)")
    p.add_argument("--size", type=int, help="working size of the longer side (default: the source's, rounded to 8)")
    p.add_argument("--guidance", type=float, help="guidance scale (default 7.5; composition 5)")
    p.add_argument("--skip", type=float, help="fraction of the first steps skipped (region_edit 0.25, inpaint 0)")
    p.add_argument("--negative", default="", help="negative prompt (region_edit, inpaint)")
    p.add_argument("--no-restore", action="store_true", help="keep the decoded background instead of the source's")
    p.add_argument("--feather", type=int, help="soft edge of the background restore in pixels (default 8)")
    p.add_argument("--rank-clip", metavar="NAME", help="rank candidates by CLIP (a model name, e.g. clip-vit-l14)")
    p.add_argument("--method", choices=("telea", "ns"), default="telea", help="classical_inpaint method")
    p.add_argument("--radius", type=int, default=5, help="classical_inpaint radius")
    p.add_argument("--dilate", type=int, default=5, help="classical_inpaint mask dilation in pixels")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: CUDA when present)")
    p.add_argument("--dtype", help="float32, float16, bfloat16 (default: float16 on CUDA, float32 on CPU)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR")
    return p


def split_model_args(items: list[str]) -> tuple[str | None, dict[str, str]]:
    """`--model` values -> (the pipeline's model name or None, resolver overrides)."""
    from refcoco_edit.errors import InputError
    from refcoco_edit.models.resolver import parse_model_overrides

    names = [i.strip() for i in items if "=" not in i]
    if len(names) > 1:
        raise InputError(f"--model NAME given more than once ({', '.join(names)})")
    return (names[0] if names else None), parse_model_overrides([i for i in items if "=" in i])


def _check_flags(args: argparse.Namespace, cls: type[EditPipeline]) -> None:
    """Refuse flags the chosen pipeline needs but lacks, or takes none of (from its capabilities)."""
    from refcoco_edit.errors import InputError
    from refcoco_edit.pipelines import pipeline_class

    if args.num < 1:
        raise InputError(f"--num must be at least 1, got {args.num}")
    if cls.needs_example and args.example is None:
        raise InputError(f"--pipeline {cls.name} needs --example IMAGE")
    if args.example is not None and not cls.needs_example:
        takers = [n for n in PIPELINE_NAMES if pipeline_class(n).needs_example]
        raise InputError(f"--example is for --pipeline {' or '.join(takers)}")
    if cls.needs_text and not (args.text and args.text.strip()):
        raise InputError(f"--pipeline {cls.name} needs --text (the edit, e.g. 'a giraffe')")
    # a weight-free pipeline ignores the model's options; a model pipeline without a text refuses them
    if cls.needs_weights and not cls.takes_text and (args.text or args.skip is not None or args.rank_clip
                                                     or args.negative):
        raise InputError(f"{cls.name} takes no --text, --skip, --negative or --rank-clip")


def _request(args: argparse.Namespace) -> EditRequest:
    """The request the flags make; the pipeline keeps the parts it takes (`generate_kwargs`)."""
    from refcoco_edit.pipelines.capabilities import EditRequest

    return EditRequest(num=args.num, seed=args.seed, text=args.text, steps=args.steps, size=args.size,
                       guidance_scale=args.guidance, feather=args.feather, restore=not args.no_restore,
                       negative_prompt=args.negative, skip=args.skip, rank_by=args.rank_clip or None,
                       method=args.method, radius=args.radius, dilate_px=args.dilate)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("refcoco-edit", "torch", "diffusers", "transformers", "opencv-python-headless", "pillow", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            continue
    return out


def run(args: argparse.Namespace) -> int:
    import json
    from dataclasses import replace

    from refcoco_edit.imaging.files import open_image
    from refcoco_edit.imaging.masks import load_mask_png, save_mask_png
    from refcoco_edit.pipelines import pipeline_class

    model, overrides = split_model_args(args.model_args)
    cls = pipeline_class(args.pipeline)
    _check_flags(args, cls)
    request = _request(args)
    image = open_image(args.image)  # DataError (one line) for a missing or corrupt file
    mask = load_mask_png(args.mask)
    example_source = None
    if args.example is not None:
        example = open_image(args.example)
        example_source = str(args.example.absolute())
        if args.example_mask is not None:
            from refcoco_edit.pipelines.composition import crop_object

            example = crop_object(example, load_mask_png(args.example_mask))
            example_source += f" cropped by {args.example_mask.absolute()}"
        request = replace(request, example=example, example_source=example_source)
    opts = cls.generate_kwargs(request)

    from refcoco_edit.pipelines.base import MaskResizedWarning

    pipe = cls(model, overrides, args.device, args.dtype)
    with warnings.catch_warnings(record=True) as caught:  # shown as one log line each, not Python's two
        warnings.simplefilter("always", MaskResizedWarning)
        candidates = pipe.generate(image, mask, **opts)
    for w in caught:
        if issubclass(w.category, MaskResizedWarning):
            logger.warning("%s", w.message)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)

    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, cand in enumerate(candidates):
        img_name, mask_name = f"candidate_{i}.png", f"candidate_{i}_mask.png"
        cand.image.save(args.out / img_name)
        save_mask_png(cand.edit_mask, args.out / mask_name)
        rows.append({"index": i, "seed": cand.seed, "model": cand.model, "score": cand.score,
                     "image": img_name, "edit_mask": mask_name, "params": cand.params})
    record = {
        "pipeline": args.pipeline,
        "model": pipe.model,
        "image": str(args.image.absolute()),
        "mask": str(args.mask.absolute()),
        "text": args.text,
        "example": example_source,
        "options": {k: v for k, v in opts.items() if k not in ("example", "example_source")},
        "versions": _versions(),
        "candidates": rows,
    }
    (args.out / CANDIDATES_FILE).write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    for row in rows:
        score = f" score {row['score']:.2f}" if row["score"] is not None else ""
        print(f"{args.out / row['image']}  seed {row['seed']}{score}")
    return 0
