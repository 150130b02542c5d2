"""`referdiffusion edit`: edit one image with a ReferDiffusion checkpoint."""

from __future__ import annotations

import argparse


def register(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "edit",
        help="edit an image following a referring instruction",
        description="Run ReferDiffusionPipeline on one image; writes the edited image and, optionally, the "
                    "predicted mask of the referred object (white = object).",
    )
    p.add_argument("--model", required=True, metavar="DIR",
                   help="ReferDiffusion checkpoint folder (`referdiffusion init`)")
    p.add_argument("--image", required=True, metavar="IMG", help="source image")
    p.add_argument("--prompt", required=True, metavar="P",
                   help='instruction, e.g. "replace the cow on the left with a panda"')
    p.add_argument("--out", required=True, metavar="OUT.png", help="edited image to write")
    p.add_argument("--mask-out", metavar="M.png", help="write the predicted referred-object mask here")
    p.add_argument("--steps", type=int, default=50, help="denoising steps (default 50)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--guidance-scale", type=float, default=7.5, help="text guidance scale (default 7.5)")
    p.add_argument("--image-guidance-scale", type=float, default=1.5, help="image guidance scale (default 1.5)")
    p.add_argument("--size", type=int, metavar="PX",
                   help="longer side the source is resized to, aspect kept, sides multiples of 8 (default: the "
                        "size the checkpoint was trained at, from its training manifest, else 512)")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    return p


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from refcoco_edit.errors import InputError, ModelNotAvailableError
    from refcoco_edit.imaging.files import open_image

    if args.steps < 1:
        raise InputError(f"--steps must be at least 1, got {args.steps}")
    model = Path(args.model)
    if not (model / "model_index.json").is_file():
        raise ModelNotAvailableError(f"{model} is not a ReferDiffusion checkpoint (no model_index.json); "
                                     "make one with `referdiffusion init`")
    if args.size is not None and args.size < 8:
        raise InputError(f"--size must be at least 8, got {args.size}")
    from referdiffusion.train.data import protocol_image
    from referdiffusion.train.manifest import trained_size

    # the picture as training and `rie-bench run` give it to the model (one preprocessing protocol)
    image = protocol_image(open_image(args.image), args.size or trained_size(model) or 512)

    import torch

    from referdiffusion.pipeline_referdiffusion import ReferDiffusionPipeline

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        pipe = ReferDiffusionPipeline.from_pretrained(model)
    except (OSError, ValueError) as exc:
        raise ModelNotAvailableError(f"cannot load {model}: {type(exc).__name__}: {exc}") from exc
    pipe = pipe.to(device)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    out = pipe(
        args.prompt,
        image=image,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance_scale,
        image_guidance_scale=args.image_guidance_scale,
        generator=generator,
    )
    dest = Path(args.out)
    dest.parent.mkdir(parents=True, exist_ok=True)
    out.images[0].save(dest)
    print(f"wrote {dest}")
    if args.mask_out:
        mask_dest = Path(args.mask_out)
        mask_dest.parent.mkdir(parents=True, exist_ok=True)
        out.masks[0].save(mask_dest)
        print(f"wrote {mask_dest}")
    return 0
