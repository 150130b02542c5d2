"""`referdiffusion train`: train ReferDiffusion (stage 1, stage 2, the ablations) with accelerate."""

from __future__ import annotations

import argparse

from refcoco_edit.commands.parser import parse_intermixed

EPILOG = """\
configs: tiny (tiny models on the bundled RefShapes sample, CPU, minutes), finetune (plain InstructPix2Pix
fine-tune), +rem (REM with L_mask and L_edit), +rem+rcl (and the Region-Control Loss), full (stage 1 then
stage 2, every loss), or a YAML file (`base: NAME` starts from a shipped one).

overrides (before, between or after the options): dotted keys, a stage by its name or index, e.g.
  referdiffusion train --config +rem stages.edit.dataset=out/refcoco-edit optim.learning_rate=1e-4
  referdiffusion train --config full stages.synth.dataset=out/synth stages.edit.dataset=out/refcoco-edit
several GPUs or nodes: accelerate launch -m referdiffusion.cli train --config full ...
"""


def register(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "train",
        help="train ReferDiffusion (stage 1 and 2, ablations) with accelerate",
        description="Train ReferDiffusion from a shipped config or a YAML file, with key=value overrides. "
                    "Checkpoints (diffusers folders that ReferDiffusionPipeline.from_pretrained loads, plus the "
                    "training state) go to OUTPUT/checkpoint-<step>; --resume continues the last one exactly.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", required=True, metavar="FILE_OR_NAME",
                   help="tiny, finetune, +rem, +rem+rcl, full, or a YAML file")
    p.add_argument("--max-steps", type=int, metavar="N",
                   help="stop after global step N (schedules keep the config's length, so a resumed run matches)")
    p.add_argument("--output", metavar="DIR", help="output folder (default: the config's output_dir, else runs/<name>)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the output folder's last checkpoint, exactly (a new run when there is none)")
    p.add_argument("--resume-from", metavar="CHECKPOINT", help="continue from this checkpoint folder")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides (dotted keys)")
    parse_intermixed(p)
    return p


def run(args: argparse.Namespace) -> int:
    from referdiffusion.train.config import config_to_dict, load_config

    config = load_config(args.config, args.overrides)
    if args.print_config:
        import yaml

        print(yaml.safe_dump(config_to_dict(config), sort_keys=False), end="")
        return 0
    from referdiffusion.train.trainer import train

    resume = args.resume_from or args.resume
    result = train(config, output_dir=args.output, max_steps=args.max_steps, resume=resume,
                   progress=not args.no_progress)
    from accelerate import PartialState

    if PartialState().is_main_process:
        last = f", last loss {result.losses[-1]:.4f}" if result.losses else ""
        print(f"trained {config.name} to step {result.global_step}{last}; output {result.output_dir}")
        if result.checkpoints:
            print(f"  checkpoints: {', '.join(p.name for p in result.checkpoints)}")
        if result.final:
            print(f"  final pipeline: {result.final}")
    return 0
