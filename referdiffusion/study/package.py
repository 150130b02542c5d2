"""Ship the study's trained rows inside the package, in fp16, each a standard diffusers folder.

Under `refcoco_edit/data/models/` (the resolver's `refshapes-*` names):

    refshapes-vae/             AutoencoderKL trained on RefShapes (shared by every row)
    refshapes-text/            the frozen random CLIP text encoder and its tokenizer (shared by every row)
    refshapes-ip2p/            the fine-tune row as a StableDiffusionInstructPix2PixPipeline folder
    refshapes-rem/             +REM            } ReferDiffusionPipeline folders
    refshapes-rem-rcl/         +REM +RCL       }
    refshapes-referdiffusion/  full (stage 1)  }

A row folder holds its own `unet/` (and `rem/`), `scheduler/`, `model_index.json` and
`training_manifest.json` (the trained size and training data the benchmark reads); its `vae`,
`text_encoder` and `tokenizer` are relative symbolic links into the shared folders, so the frozen
parts are stored once and every loader (`from_pretrained` on the folder) sees a complete pipeline.

    python -m referdiffusion.study.package --row finetune --final RUN/final [--models DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

from refcoco_edit.errors import InputError

MODELS = Path(__file__).resolve().parents[2] / "refcoco_edit" / "data" / "models"
PACKAGED: dict[str, str] = {"finetune": "refshapes-ip2p", "rem": "refshapes-rem", "rem_rcl": "refshapes-rem-rcl",
                            "full": "refshapes-referdiffusion"}
VAE, TEXT = "refshapes-vae", "refshapes-text"
LINKS = {"vae": f"../{VAE}", "text_encoder": f"../{TEXT}/text_encoder", "tokenizer": f"../{TEXT}/tokenizer"}
MANIFEST = "training_manifest.json"

IP2P_INDEX: dict[str, Any] = {
    "_class_name": "StableDiffusionInstructPix2PixPipeline",
    "feature_extractor": [None, None], "image_encoder": [None, None], "requires_safety_checker": False,
    "safety_checker": [None, None], "scheduler": ["diffusers", "DDIMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
}


def _same_weights(a: Any, b: Any) -> bool:
    import torch

    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k].half(), sb[k].half()) for k in sa)


def write_text(pipe: Any, models: Path) -> str:
    """The shared text folder, written once; a row whose text encoder differs is refused."""
    import torch
    from transformers import CLIPTextModel

    from refcoco_edit.io import atomic_dir

    dest = models / TEXT
    if (dest / "text_encoder" / "config.json").is_file():
        shipped = CLIPTextModel.from_pretrained(dest / "text_encoder")
        if not _same_weights(shipped, pipe.text_encoder):
            raise InputError(f"the row's text encoder differs from the shipped {dest}; every row must share it")
        return "kept"
    with atomic_dir(dest) as tmp:
        pipe.text_encoder.to(torch.float16).save_pretrained(Path(tmp) / "text_encoder")
        pipe.tokenizer.save_pretrained(Path(tmp) / "tokenizer")
    pipe.text_encoder.float()
    return "written"


def package_row(row: str, final: Path | str, models: Path | str = MODELS) -> dict[str, Any]:
    """Write row `row`'s trained `final/` folder as its packaged folder (replacing an older one)."""
    import torch
    from diffusers import AutoencoderKL

    from refcoco_edit.io import atomic_dir
    from referdiffusion.pipeline_referdiffusion import ReferDiffusionPipeline

    if row not in PACKAGED:
        raise InputError(f"unknown row {row!r}; rows: {', '.join(PACKAGED)}")
    final, models = Path(final), Path(models)
    if not (final / "model_index.json").is_file() or not (final / MANIFEST).is_file():
        raise InputError(f"{final} is not a trained row's final folder (model_index.json and {MANIFEST})")
    pipe = ReferDiffusionPipeline.from_pretrained(final, torch_dtype=torch.float32)
    shipped_vae = AutoencoderKL.from_pretrained(models / VAE)
    if not _same_weights(shipped_vae, pipe.vae):
        raise InputError(f"the row's VAE differs from the shipped {models / VAE}; rows are trained on it")
    text = write_text(pipe, models)
    dest = models / PACKAGED[row]
    if dest.exists():
        shutil.rmtree(dest)
    with atomic_dir(dest) as tmp:
        tmp = Path(tmp)
        pipe.unet.to(torch.float16).save_pretrained(tmp / "unet")
        pipe.scheduler.save_pretrained(tmp / "scheduler")
        if row == "finetune":  # no REM: InstructPix2Pix's own pipeline loads it
            index = {**IP2P_INDEX, "_diffusers_version": _diffusers_version()}
        else:
            pipe.rem.to(torch.float16).save_pretrained(tmp / "rem")
            index = json.loads((final / "model_index.json").read_text())
            index.pop("_name_or_path", None)
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        shutil.copyfile(final / MANIFEST, tmp / MANIFEST)
        for name, target in LINKS.items():
            (tmp / name).symlink_to(target, target_is_directory=True)
    size = sum(f.stat().st_size for f in dest.rglob("*") if f.is_file() and not f.is_symlink()
               and not any(p.is_symlink() for p in f.relative_to(dest).parents if p != Path(".")))
    return {"row": row, "folder": str(dest), "text": text, "bytes": size}


def _diffusers_version() -> str:
    import diffusers

    return diffusers.__version__


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m referdiffusion.study.package", description=__doc__.split("\n")[0])
    p.add_argument("--row", required=True, choices=list(PACKAGED))
    p.add_argument("--final", required=True, type=Path, help="the row's trained final/ folder")
    p.add_argument("--models", type=Path, default=MODELS, help=f"where the packaged folders go (default {MODELS})")
    args = p.parse_args(argv)
    print(json.dumps(package_row(args.row, args.final, args.models)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
