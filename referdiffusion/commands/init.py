"""`referdiffusion init`: make a ReferDiffusion checkpoint from InstructPix2Pix or Stable Diffusion 1.5."""

from __future__ import annotations

import argparse


def register(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "init",
        help="make a ReferDiffusion checkpoint from an InstructPix2Pix or SD 1.5 one",
        description=(
            "Write a diffusers checkpoint folder (unet, vae, text_encoder, tokenizer, scheduler = DDIM, rem, "
            "model_index.json) for ReferDiffusionPipeline. An InstructPix2Pix UNet is kept as it is; a "
            "Stable Diffusion UNet gets 8 input channels (the new ones zero). The Region-Embedder Module "
            "starts with a zero gate, so the new checkpoint edits exactly as its source."
        ),
    )
    p.add_argument("--from", dest="source", required=True, metavar="NAME_OR_DIR",
                   help="a checkpoint folder, or a model name (ip2p, sd15, tiny-ip2p, tiny-sd15; "
                        "see `refcoco-edit models`)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write")
    p.add_argument("--seed", type=int, default=0, help="seed of the REM's random initialisation (default 0)")
    p.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"),
                   help="the one dtype every component is written in (default float32, what training starts from)")
    p.add_argument("--overwrite", action="store_true", help="write into a folder that is not empty")
    return p


def run(args: argparse.Namespace) -> int:
    from referdiffusion.init import init_checkpoint

    report = init_checkpoint(args.source, args.out, seed=args.seed, overwrite=args.overwrite, dtype=args.dtype)
    widened = ", first convolution widened to 8 channels" if report.widened_conv_in else ""
    print(f"wrote {report.out} from {report.source} ({report.source_kind}{widened}; "
          f"REM {report.rem_parameters:,} parameters)")
    return 0
