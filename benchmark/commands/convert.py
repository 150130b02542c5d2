"""`rie-bench convert --from ldm CKPT --out DIR`: a single-file LDM checkpoint to a diffusers folder."""

from __future__ import annotations

import argparse

FORMATS = ("ldm",)


def register(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "convert", help="convert a single-file LDM checkpoint (MagicBrush, InstructDiffusion) to a diffusers folder",
        description="Convert an InstructPix2Pix-style single-file LDM checkpoint (.ckpt/.safetensors, 8-channel "
                    "UNet), such as the MagicBrush and InstructDiffusion releases, into a diffusers folder that "
                    "--method-model or --model NAME=DIR can name. Nothing is downloaded: the architecture "
                    "(Stable Diffusion 1.5) ships with the toolkit. See docs/checkpoints.md.")
    p.add_argument("checkpoint", metavar="CKPT", help="the .ckpt or .safetensors file")
    p.add_argument("--from", dest="fmt", required=True, choices=FORMATS, help="the checkpoint's layout")
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write (must not exist or be empty)")
    p.add_argument("--config", metavar="DIR",
                   help="a diffusers-format folder with the architecture (default: Stable Diffusion 1.5 with an "
                        "8-channel UNet)")
    p.add_argument("--tokenizer", metavar="DIR", help="a folder holding a CLIP tokenizer (default: OpenAI CLIP's)")
    p.add_argument("--no-ema", dest="ema", action="store_false",
                   help="take the raw UNet weights even when the checkpoint has EMA weights")
    p.add_argument("--dtype", default="float32", help="dtype of every written component (default float32)")
    p.add_argument("--overwrite", action="store_true", help="replace a folder that is not empty")
    p.add_argument("--progress", action="store_true", help="show the libraries' progress bars")
    return p


def run(args: argparse.Namespace) -> int:
    from benchmark.convert import convert_ldm

    report = convert_ldm(args.checkpoint, args.out, config=args.config, tokenizer=args.tokenizer, ema=args.ema,
                         dtype=args.dtype, overwrite=args.overwrite, progress=args.progress)
    sizes = ", ".join(f"{k} {v / 1e6:.1f}M" for k, v in report.parameters.items())
    print(f"wrote {report.out} from {report.checkpoint} ({report.config}, {'EMA' if report.ema else 'raw'} UNet "
          f"weights, {report.dtype}; {sizes})")
    return 0
