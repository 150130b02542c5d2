"""`rie-bench leaderboard`: one table (Markdown, HTML with an image grid, or JSON) from run folders."""

from __future__ import annotations

import argparse
from pathlib import Path

from refcoco_edit.commands.parser import parse_intermixed


def register(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "leaderboard",
        help="compare runs: Markdown, HTML (with a grid of the same samples across methods) or JSON",
        description="Read RUN_DIR/results.json of each run and render the leaderboard: arrows for the better "
                    "direction, bootstrap 95%% CIs, best in bold; HTML adds a grid of samples across methods.",
    )
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR", help="run folders (or results.json files)")
    p.add_argument("--format", choices=("md", "html", "json"), default="md", help="output format (default md)")
    p.add_argument("--out", type=Path, metavar="FILE", help="write here instead of printing")
    p.add_argument("--grid", type=int, default=4, metavar="N", help="samples in the image grid (default 4; 0: none)")
    p.add_argument("--thumb", type=int, default=256, metavar="PX", help="grid image size (default 256)")
    p.add_argument("--dataset", metavar="PATH",
                   help="dataset for the grid's source column (default: the one recorded in the first run)")
    p.add_argument("--image-dir", type=Path, metavar="DIR",
                   help="HTML: write the grid's images here and link them (default: embedded as base64)")
    parse_intermixed(p)  # run folders before and after the options
    return p


def run(args: argparse.Namespace) -> int:
    from benchmark.leaderboard import (
        choose_grid_samples,
        load_runs,
        render_grid_png,
        render_html,
        render_json,
        render_markdown,
    )
    from benchmark.run.folder import save_png_atomic
    from refcoco_edit.errors import InputError
    from refcoco_edit.io import atomic_write_text

    if args.grid < 0 or args.thumb < 16:
        raise InputError("--grid must be >= 0 and --thumb >= 16")
    runs = load_runs(args.runs)
    if args.format == "json":
        text = render_json(runs)
    elif args.format == "html":
        text = render_html(runs, grid=args.grid, thumb=args.thumb, dataset=args.dataset, image_dir=args.image_dir,
                           html_path=args.out)
    else:
        grid_name, ids = None, []
        if args.out is not None and args.grid:
            ids = choose_grid_samples(runs, args.grid)
            if ids:
                grid_path = args.out.with_name(args.out.stem + "_grid.png")
                save_png_atomic(render_grid_png(runs, ids, dataset=args.dataset, thumb=args.thumb), grid_path)
                grid_name = grid_path.name
        text = render_markdown(runs, grid_image=grid_name, grid_ids=ids)
    if args.out is None:
        print(text, end="")
        return 0
    atomic_write_text(args.out, text)
    print(f"wrote {args.out}")
    return 0
