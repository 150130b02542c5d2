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
import os
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


TEXT_CARD = """# refshapes-text

The text encoder and tokenizer shared by the RefShapes study's editors (`refshapes-ip2p`,
`refshapes-rem`, `refshapes-rem-rcl`, `refshapes-referdiffusion`), which link to this folder instead of
holding a copy each.

- `text_encoder/`: a transformers `CLIPTextModel` of width 64 (two layers, four heads, 32 positions),
  weights drawn from seed 0 and never trained (`referdiffusion.study.text_encoder.build_text_encoder`);
  fp16 safetensors, 6.5 MB, almost all of it the 49,408 x 64 token embedding. Why frozen and random, and
  the linear probes that show RefShapes' words can be read from its features: `docs/refshapes.md`.
- `tokenizer/`: the project's CLIP tokenizer (OpenAI's vocabulary), `model_max_length` 32.

Written by `python -m referdiffusion.study.package` from the first row packaged; every later row must
hold the same weights (it is refused otherwise).
"""


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
        (Path(tmp) / "README.md").write_text(TEXT_CARD)
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
        (tmp / "README.md").write_text(card(row, pipe))
        for config in tmp.glob("*/config.json"):  # where the weights were saved from: this machine's paths
            data = json.loads(config.read_text())
            if data.pop("_name_or_path", None) is not None:
                config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    # the row's own files: os.walk does not enter the links to the shared folders
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(dest) for f in files)
    return {"row": row, "folder": str(dest), "text": text, "bytes": size}


ROW_TEXT = {
    "finetune": ("the study's fine-tune row: InstructPix2Pix's UNet trained from scratch, no REM, L_noise",
                 "diffusers' `StableDiffusionInstructPix2PixPipeline`", "rie-bench run --method ip2p "
                 "--method-model refshapes-ip2p --dataset DIR --out RUN"),
    "rem": ("the study's +REM row: the UNet and the Region-Embedder Module, L_noise + L_mask + L_edit",
            "`referdiffusion.ReferDiffusionPipeline`", "rie-bench run --method referdiffusion "
            "--method-model refshapes-rem --dataset DIR --out RUN"),
    "rem_rcl": ("the study's +REM +RCL row: as +REM, plus the Region-Control Loss",
                "`referdiffusion.ReferDiffusionPipeline`", "rie-bench run --method referdiffusion "
                "--method-model refshapes-rem-rcl --dataset DIR --out RUN"),
    "full": ("the study's full row: the self-supervised stage 1, then stage 2 with every loss",
             "`referdiffusion.ReferDiffusionPipeline`", "rie-bench run --method referdiffusion "
             "--method-model refshapes-referdiffusion --dataset DIR --out RUN"),
}


def card(row: str, pipe: Any) -> str:
    """The folder's model card: what it is, how it was trained, how to load and reproduce it."""
    from referdiffusion.study.rows import config_name
    from referdiffusion.train import load_config

    cfg = load_config(config_name(row))
    what, loader, use = ROW_TEXT[row]
    stages = ", ".join(f"{st.name} {st.max_steps:,} steps" for st in cfg.stages)
    unet = sum(p.numel() for p in pipe.unet.parameters())
    rem = "" if row == "finetune" else f", REM {sum(p.numel() for p in pipe.rem.parameters()):,} parameters"
    return f"""# {PACKAGED[row]}

ReferDiffusion on RefShapes, {what}; trained here from scratch on a 2-core CPU
(`docs/refshapes.md` has its results on the study's test split, beside the other rows).

- Loads with {loader}; the resolver name `{PACKAGED[row]}` finds this folder. `vae`, `text_encoder` and
  `tokenizer` link to the shared `refshapes-vae` and `refshapes-text`.
- UNet: InstructPix2Pix's 8-channel `UNet2DConditionModel`, blocks
  {"/".join(str(c) for c in pipe.unet.config.block_out_channels)}, {unet:,} parameters{rem}; fp16 safetensors.
- Training (`referdiffusion train --config {config_name(row)}`): {stages}, batch {cfg.batch_size}, seed {cfg.seed},
  AdamW at {cfg.optim.learning_rate:g} ({cfg.optim.lr_warmup_steps} warm-up steps, {cfg.optim.lr_scheduler}),
  EMA {cfg.model.ema_decay}, {cfg.data.resolution} px under the `{cfg.data.resize}` protocol (RefShapes' 128 x 96
  at 64 x 48), RefShapes' train split only (`training_manifest.json` lists its pictures). The weights are the EMA's.
- Use: `{use}` (it works at its trained size without `--size`).
- Reproduce: `python -m referdiffusion.study.run --root DIR --vae refcoco_edit/data/models/refshapes-vae`.
"""


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
